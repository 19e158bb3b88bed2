//! Containers of the Docker engine, through its API socket.

use std::{os::unix::fs::MetadataExt, path::Path};

use bollard::{Docker, query_parameters::ListContainersOptions};

use super::{Container, Runtime};

/// Where the engine listens.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The running containers with their network namespaces. Empty when Docker is not running; an
/// error only when it runs but does not answer sensibly.
pub async fn containers() -> anyhow::Result<Vec<Container>> {
    let mut found = Vec::new();
    if !Path::new(DOCKER_SOCKET).exists() {
        return Ok(found);
    }
    let docker = Docker::connect_with_unix(DOCKER_SOCKET, 5, bollard::API_DEFAULT_VERSION)?;
    let listed = docker
        .list_containers(Some(ListContainersOptions::default()))
        .await?;
    for summary in listed {
        let Some(id) = summary.id else { continue };
        let Ok(details) = docker.inspect_container(&id, None).await else {
            continue;
        };
        let sandbox = details
            .network_settings
            .and_then(|settings| settings.sandbox_key)
            .filter(|key| !key.is_empty());
        let name = details
            .name
            .map(|name| name.trim_start_matches('/').to_owned());
        if let (Some(sandbox), Some(name)) = (sandbox, name)
            && let Ok(meta) = std::fs::metadata(&sandbox)
        {
            found.push(Container {
                runtime: Runtime::Docker,
                id,
                name,
                pod: None,
                sandbox: false,
                netns_inode: meta.ino(),
            });
        }
    }
    Ok(found)
}
