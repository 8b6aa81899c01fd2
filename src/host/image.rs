//! `skiff image ...`: images in the node's containerd namespace.

use anyhow::Result;
use skiff_node::runtime::Containerd;

use skiff_cli::args::{ContainerdArgs, ImageCommand};
use skiff_cli::table;

async fn connect(c: &ContainerdArgs) -> Result<Containerd> {
    Containerd::connect(&c.containerd, &c.containerd_namespace).await
}

pub async fn run(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Import { file, containerd } => {
            let c = connect(&containerd).await?;
            for name in c.import(&file).await? {
                println!("{name}");
            }
        }
        ImageCommand::Ls { containerd, output } => {
            let images = connect(&containerd).await?.images().await?;
            if output.is_some() {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.digest.chars().take(19).collect(),
                            human_size(i.size),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table::render(&["IMAGE", "DIGEST", "SIZE"], &rows).trim_end()
                );
            }
        }
        ImageCommand::Rm { name, containerd } => {
            let c = connect(&containerd).await?;
            let name = skiff_node::image::Reference::parse(&name)?.to_string();
            c.remove_image(&name).await?;
            println!("{name} removed");
        }
        ImageCommand::BuildBusybox {
            out,
            busybox,
            name,
            demo,
        } => {
            let default = if demo {
                skiff_node::image::build::DEMO_IMAGE
            } else {
                "docker.io/library/busybox:latest"
            };
            let name = name.as_deref().unwrap_or(default);
            let name = skiff_node::image::Reference::parse(name)?.to_string();
            skiff_node::image::build::image(&busybox, &name, &out, demo)?;
            println!("{name} written to {}", out.display());
        }
    }
    Ok(())
}

fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
