//! The container fallback of the store crates' test helpers: when no
//! server answers at the URL the tests were given, and outside CI, they
//! start one in a Docker container through testcontainers.
//!
//! The testcontainers path is compiled only with
//! `RUSTFLAGS="--cfg mcp_authkit_containers"`, not by a feature: the Docker
//! client costs minutes of build that `--all-features` (what CI builds)
//! would pay on every run for a path CI never takes (DESIGN.md, "Tests and
//! their servers"). Without the cfg, [`Unavailable::NotBuilt`] says so.

/// Why no container serves the tests.
#[derive(Debug)]
#[non_exhaustive]
pub enum Unavailable {
    /// Built without `--cfg mcp_authkit_containers`.
    NotBuilt,
    /// No Docker engine, or it did not start the container: why, in words
    /// that fit "no server at URL and ...".
    Failed(String),
}

/// Whether the container path is compiled in.
pub const BUILT: bool = cfg!(mcp_authkit_containers);

/// The last line of a "no server" message outside CI: how the container
/// fallback could provide `image` (e.g. `redis:7`).
pub fn hint(image: &str) -> String {
    if BUILT {
        format!(
            ",\n- or run a Docker engine: the tests then start a `{image}` container themselves."
        )
    } else {
        format!(
            ",\n- or, with a Docker engine, build the tests with \
             RUSTFLAGS=\"--cfg mcp_authkit_containers\" to have them start a `{image}` container."
        )
    }
}

/// Starts `image` (or reuses the running container of that `name`) and
/// returns the host and host port of its `port`. The container is kept for
/// reuse when its handle drops, so later runs and the child processes of
/// cross-process tests share it; `docker rm -f NAME` removes it.
#[cfg(mcp_authkit_containers)]
pub async fn start<I>(
    image: impl testcontainers::ImageExt<I>,
    name: &str,
    port: u16,
) -> Result<(String, u16), Unavailable>
where
    I: testcontainers::Image,
{
    use testcontainers::core::client::ClientError;
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{ImageExt, ReuseDirective, TestcontainersError};

    let started = image
        .with_container_name(name)
        .with_reuse(ReuseDirective::Always)
        .start()
        .await;
    let container = match started {
        Ok(container) => container,
        Err(TestcontainersError::Client(ClientError::Init(error))) => {
            return Err(Unavailable::Failed(format!(
                "no Docker engine to start one in ({error})"
            )));
        }
        Err(error) => {
            return Err(Unavailable::Failed(format!(
                "its container {name} did not start ({error})"
            )));
        }
    };
    let failed = |e: TestcontainersError| {
        Unavailable::Failed(format!("container {name} has no address ({e})"))
    };
    let host = container.get_host().await.map_err(failed)?;
    let host_port = container.get_host_port_ipv4(port).await.map_err(failed)?;
    eprintln!(
        "[mcp-authkit tests] using container {name} at {host}:{host_port}; it keeps running \
         for the next run (docker rm -f {name} removes it)"
    );
    Ok((host.to_string(), host_port))
}
