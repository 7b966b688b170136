//! The headless browser against a small site of its own.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use mcp_authkit_testkit::{Browser, Error};
use url::Url;

/// A site that sets a cookie, redirects in each way, and loops.
async fn site() -> Url {
    let app = Router::new()
        .route(
            "/login",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [
                        (header::SET_COOKIE, "session=s1; Path=/; HttpOnly"),
                        (header::LOCATION, "/whoami"),
                    ],
                )
            }),
        )
        .route(
            "/logout",
            get(|| async { [(header::SET_COOKIE, "session=; Max-Age=0")] }),
        )
        .route(
            "/whoami",
            get(|headers: HeaderMap| async move {
                let cookie = headers
                    .get(header::COOKIE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let user = headers
                    .get("x-test-user")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                format!("cookie=[{cookie}] user=[{user}]")
            }),
        )
        .route(
            "/submit",
            post(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/echo")],
                )
            })
            .get(|| async { (StatusCode::SEE_OTHER, [(header::LOCATION, "/whoami")]) }),
        )
        .route(
            "/echo",
            post(|body: Bytes| async move { String::from_utf8(body.to_vec()).unwrap() }),
        )
        .route(
            "/to-callback",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(
                        header::LOCATION,
                        "http://127.0.0.1:9/cb?code=SECRET-CODE&state=st",
                    )],
                )
            }),
        )
        .route(
            "/loop",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]).into_response() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Url::parse(&format!("http://{addr}/")).unwrap()
}

#[tokio::test]
async fn hops_cookies_and_headers_are_like_a_browser() {
    let site = site().await;
    let browser = Browser::new()
        .with_user("alice")
        .with_cookie("pref", "dark");
    let navigation = browser
        .get(site.join("/login").unwrap().as_str())
        .await
        .unwrap();
    let hops = navigation.hops();
    assert_eq!(hops.len(), 2);
    assert_eq!(hops[0].status, 302);
    assert_eq!(hops[0].location.as_ref().unwrap().path(), "/whoami");
    let page = navigation.page().unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.body, "cookie=[pref=dark; session=s1] user=[alice]");

    // A clone shares the cookie jar; a deleted cookie is gone.
    let clone = browser.clone();
    clone
        .get(site.join("/logout").unwrap().as_str())
        .await
        .unwrap();
    let again = browser
        .get(site.join("/whoami").unwrap().as_str())
        .await
        .unwrap();
    assert_eq!(
        again.page().unwrap().body,
        "cookie=[pref=dark] user=[alice]"
    );
}

#[tokio::test]
async fn redirect_methods_follow_the_status_code() {
    let site = site().await;
    let browser = Browser::new();
    let posted = browser
        .post_form(
            site.join("/submit").unwrap().as_str(),
            &[("a", "1"), ("b", "x y")],
        )
        .await
        .unwrap();
    assert_eq!(posted.hops()[1].method, "POST", "307 repeats the POST");
    assert_eq!(posted.page().unwrap().body, "a=1&b=x+y");
    let got = browser
        .get(site.join("/submit").unwrap().as_str())
        .await
        .unwrap();
    assert_eq!(got.hops()[1].method, "GET");
}

#[tokio::test]
async fn stopping_before_an_origin_reads_the_redirect_without_requesting_it() {
    let site = site().await;
    let callback = Url::parse("http://127.0.0.1:9/").unwrap();
    let navigation = Browser::new()
        .stop_before(&callback)
        .get(site.join("/to-callback").unwrap().as_str())
        .await
        .unwrap();
    assert_eq!(navigation.hops().len(), 1);
    assert!(navigation.page().is_none());
    assert_eq!(navigation.stopped_at().unwrap().port(), Some(9));
    let response = navigation.authorization_response();
    assert_eq!(response.code.as_deref(), Some("SECRET-CODE"));
    assert_eq!(response.state.as_deref(), Some("st"));

    // Debug output of all of it hides the code.
    for shown in [format!("{navigation:?}"), format!("{response:?}")] {
        assert!(!shown.contains("SECRET-CODE"), "{shown}");
        assert!(shown.contains("state"), "{shown}");
    }
}

#[tokio::test]
async fn loops_and_unreachable_urls_are_clear_errors_without_secrets() {
    let site = site().await;
    let error = Browser::new()
        .max_hops(5)
        .get(site.join("/loop").unwrap().as_str())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TooManyRedirects { limit: 5, .. }),
        "{error}"
    );
    assert!(!error.is_retryable());

    // Port 9 on loopback refuses connections: the request follows the
    // redirect and fails, and the error does not carry the code.
    let error = Browser::new()
        .get(site.join("/to-callback").unwrap().as_str())
        .await
        .unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(matches!(error, Error::Http { .. }), "{shown}");
    assert!(error.is_retryable(), "a refused connection is retryable");
    assert!(!shown.contains("SECRET-CODE"), "{shown}");
}

/// A site whose cookies have a path, a lifetime or `Secure`.
async fn scoped_site() -> Url {
    let echo = |headers: HeaderMap| async move {
        headers
            .get(header::COOKIE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let app = Router::new()
        .route(
            "/app/set",
            get(|| async {
                let mut headers = HeaderMap::new();
                for cookie in [
                    "scoped=1; Path=/app; HttpOnly; SameSite=Lax",
                    "lasting=2; Path=/; Max-Age=600",
                    "secure=3; Path=/; Secure",
                    "dir=4",
                ] {
                    headers.append(header::SET_COOKIE, cookie.parse().unwrap());
                }
                headers
            }),
        )
        .route(
            "/app/unset",
            get(|| async { [(header::SET_COOKIE, "scoped=1; Path=/app; Max-Age=0")] }),
        )
        .route("/app/echo", get(echo))
        .route("/apple/echo", get(echo))
        .route("/other/echo", get(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Url::parse(&format!("http://{addr}/")).unwrap()
}

#[tokio::test]
async fn cookies_keep_their_path_lifetime_and_secure_flag_per_jar() {
    let site = scoped_site().await;
    let url = |path: &str| site.join(path).unwrap().to_string();
    let browser = Browser::new();
    browser.get(&url("/app/set")).await.unwrap();
    let page = |browser: Browser, path: &'static str| {
        let target = url(path);
        async move {
            browser
                .get(&target)
                .await
                .unwrap()
                .page()
                .unwrap()
                .body
                .clone()
        }
    };
    // Longer paths first; `dir` has the default path `/app`; `secure`
    // never goes over plain http.
    assert_eq!(
        page(browser.clone(), "/app/echo").await,
        "scoped=1; dir=4; lasting=2"
    );
    assert_eq!(
        page(browser.clone(), "/apple/echo").await,
        "lasting=2",
        "not a directory of /app"
    );
    assert_eq!(page(browser.clone(), "/other/echo").await, "lasting=2");
    assert_eq!(
        browser.stored_cookies(&url("/app/echo")),
        [
            ("scoped".to_owned(), "1".to_owned()),
            ("dir".to_owned(), "4".to_owned()),
            ("lasting".to_owned(), "2".to_owned())
        ]
    );

    // Another profile starts empty and keeps its own cookies.
    let other = browser.clone().with_new_cookie_jar();
    assert_eq!(page(other.clone(), "/app/echo").await, "");
    other.get(&url("/app/set")).await.unwrap();
    other.get(&url("/app/unset")).await.unwrap();
    assert_eq!(page(other, "/app/echo").await, "dir=4; lasting=2");
    assert_eq!(
        page(browser, "/app/echo").await,
        "scoped=1; dir=4; lasting=2"
    );
}
