//! Internal test plumbing of the store crates (hidden from the docs; not
//! a stable API): the container fallback of their test helpers. When no
//! server answers at the URL the tests were given, and outside CI, they
//! start one in a Docker container through testcontainers, its port
//! published on 127.0.0.1 only (loopback only).
//!
//! The testcontainers path is compiled only with
//! `RUSTFLAGS="--cfg mcp_authkit_containers"`, not by a feature: the Docker
//! client costs minutes of build that `--all-features` (what CI builds)
//! would pay on every run for a path CI never takes (DESIGN.md, "Tests and
//! their servers"). Without the cfg, [`Unavailable::NotBuilt`] says so.

/// Why no container serves the tests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Unavailable {
    /// Built without `--cfg mcp_authkit_containers`.
    NotBuilt,
    /// Docker could not be used, or did not start the container: why, in
    /// words that fit "no server at URL and ...".
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

/// Starts the container `request()` describes under `name` (or reuses the
/// container of that name) and returns the host and host port of its
/// `port`. The port is published on 127.0.0.1 only (loopback only: the
/// servers in these containers take no password). The container is kept
/// for reuse when its handle drops, so later runs and the child processes
/// of cross-process tests share it; `docker rm -f NAME` removes it.
///
/// Call it once per process and name (the store crates keep its answer in
/// a `OnceCell`): two calls at once would both try to create `name`.
/// Separate processes can still race; the loser of the create (409
/// Conflict) looks the winner's container up once more.
#[cfg(mcp_authkit_containers)]
pub async fn start<I>(
    request: impl Fn() -> testcontainers::ContainerRequest<I>,
    name: &str,
    port: u16,
) -> Result<(String, u16), Unavailable>
where
    I: testcontainers::Image,
{
    use testcontainers::bollard::errors::Error as DockerError;
    use testcontainers::core::client::ClientError;
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{ImageExt, ReuseDirective, TestcontainersError};

    let start = || {
        request()
            .with_container_name(name)
            .with_reuse(ReuseDirective::Always)
            // testcontainers publishes every exposed port on all host
            // interfaces (0.0.0.0); bind just `port`, on loopback, on a
            // port the engine picks.
            .with_host_config_modifier(move |host| loopback_only(host, port))
            .start()
    };
    let mut started = start().await;
    if let Err(TestcontainersError::Client(ClientError::CreateContainer(
        DockerError::DockerResponseServerError {
            status_code: 409, ..
        },
    ))) = started
    {
        // Another process created `name` between our lookup and our
        // create: the reuse lookup now finds its container.
        started = start().await;
    }
    let container = match started {
        Ok(container) => container,
        // Init fails without an engine, but also on a bad DOCKER_HOST or
        // configuration: say what failed, not what is missing.
        Err(TestcontainersError::Client(ClientError::Init(error))) => {
            return Err(Unavailable::Failed(format!(
                "could not use Docker to start one ({error})"
            )));
        }
        Err(error) => {
            return Err(Unavailable::Failed(format!(
                "could not use Docker: its container {name} did not start ({error})"
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

/// Publishes only `port` (TCP), on 127.0.0.1, on a host port the engine
/// picks.
#[cfg(mcp_authkit_containers)]
fn loopback_only(host: &mut testcontainers::bollard::models::HostConfig, port: u16) {
    use testcontainers::bollard::models::PortBinding;
    host.publish_all_ports = Some(false);
    host.port_bindings = Some(
        [(
            format!("{port}/tcp"),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some("0".to_owned()),
            }]),
        )]
        .into_iter()
        .collect(),
    );
}

#[cfg(all(test, mcp_authkit_containers))]
mod tests {
    use testcontainers::bollard::models::HostConfig;

    /// What testcontainers sets for an image without mapped ports, then
    /// our modifier: nothing may stay published beyond loopback.
    #[test]
    fn only_the_port_is_published_and_only_on_loopback() {
        let mut host = HostConfig {
            publish_all_ports: Some(true),
            port_bindings: Some(Default::default()),
            ..Default::default()
        };
        super::loopback_only(&mut host, 6379);
        assert_eq!(host.publish_all_ports, Some(false));
        let bindings = host.port_bindings.unwrap();
        assert_eq!(bindings.len(), 1, "{bindings:?}");
        let binding = bindings["6379/tcp"].as_ref().unwrap();
        assert_eq!(binding.len(), 1, "{binding:?}");
        assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding[0].host_port.as_deref(), Some("0"));
    }
}
