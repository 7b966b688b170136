//! `OpenBrowser` starts the browser without a shell: an authorization URL
//! full of shell metacharacters reaches the browser as one argument, whole.
//!
//! `$BROWSER` names a script that records its arguments; it is set before
//! anything else runs (no other thread can read the environment then), so
//! this test has its own binary without the test harness.

#[cfg(unix)]
fn main() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use mcp_authkit_providers::client::{
        AuthorizationPrompt, OpenBrowser, PromptOutcome, UserInteraction,
    };

    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("args");
    let script = dir.path().join("record-browser");
    // Each argument on its own, NUL-terminated, then the count; written
    // elsewhere first so a half-written file is never read.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor arg in \"$@\"; do printf '%s\\0' \"$arg\"; done > '{0}.tmp'\n\
             printf '%s' \"$#\" > '{0}.count'\nmv '{0}.tmp' '{0}'\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: no other thread exists yet in this process.
    unsafe { std::env::set_var("BROWSER", &script) };

    let marker = dir.path().join("pwned");
    let url = url::Url::parse(&format!(
        "https://as.example/authorize?response_type=code&client_id=a&state=s^t&x=%PATH%\
         &y=$(touch%20{m})&z=`touch%20{m}`;touch%20{m}|cat&w=a%26b",
        m = marker.display()
    ))
    .unwrap();
    let prompt = AuthorizationPrompt::new(url.clone(), "http://127.0.0.1:9/callback");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(OpenBrowser.authorize(&prompt)).unwrap();
    assert!(matches!(outcome, PromptOutcome::AwaitRedirect));

    let deadline = Instant::now() + Duration::from_secs(10);
    while !record.exists() {
        assert!(Instant::now() < deadline, "the browser was never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let recorded = std::fs::read(&record).unwrap();
    let args: Vec<String> = recorded
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let count = std::fs::read_to_string(format!("{}.count", record.display())).unwrap();
    assert_eq!(count, "1", "one argument: {args:?}");
    assert_eq!(args, [url.as_str()], "the URL whole");
    assert!(!marker.exists(), "no shell ran the URL's commands");
    println!("open_browser: the URL reached the browser as one argument, whole");
}

#[cfg(not(unix))]
fn main() {
    println!("open_browser: this check records arguments with a shell script (Unix only)");
}
