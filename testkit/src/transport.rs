//! HTTP clients for the server's outgoing fetches and the browser, built on
//! first use.
//!
//! Loading the platform's certificate verifier costs tens of milliseconds
//! per client in debug builds, and tests almost only talk plain HTTP on
//! loopback, so `http` URLs get a client without TLS roots and only the
//! first `https` URL pays for the full one.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::{Certificate, Client, ClientBuilder};
use url::Url;

pub(crate) struct Clients {
    timeout: Option<Duration>,
    plain: OnceLock<Client>,
    tls: OnceLock<Client>,
}

impl Clients {
    /// Clients that never follow redirects, with an overall timeout per
    /// request when given.
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        Clients {
            timeout,
            plain: OnceLock::new(),
            tls: OnceLock::new(),
        }
    }

    pub(crate) fn for_url(&self, url: &Url) -> reqwest::Result<&Client> {
        if url.scheme() == "https" {
            get_or_build(&self.tls, || self.builder().build())
        } else {
            get_or_build(&self.plain, || {
                self.builder()
                    .tls_certs_only(Vec::<Certificate>::new())
                    .build()
            })
        }
    }

    fn builder(&self) -> ClientBuilder {
        let builder = Client::builder().redirect(reqwest::redirect::Policy::none());
        match self.timeout {
            Some(timeout) => builder.timeout(timeout),
            None => builder,
        }
    }
}

fn get_or_build(
    cell: &OnceLock<Client>,
    build: impl FnOnce() -> reqwest::Result<Client>,
) -> reqwest::Result<&Client> {
    if let Some(client) = cell.get() {
        return Ok(client);
    }
    let client = build()?;
    // A racing builder may have won; either client is as good.
    Ok(cell.get_or_init(|| client))
}
