//! Compiles the .proto files with protox (no system `protoc`) and gives every
//! object message its Kubernetes JSON form through serde attributes derived
//! from the descriptors: camelCase (`json_name`) names and empty fields
//! omitted.

use prost_types::field_descriptor_proto::{Label, Type};

/// Messages whose JSON form is written by hand in `src/wire.rs`.
const HAND_WRITTEN: &[&str] = &["Time", "Quantity", "IntOrString", "FieldsV1"];

/// Fields Kubernetes writes even when zero or false (`exitCode: 0`,
/// `restartCount: 0`, `ready: false`), as `Message.field`.
const ALWAYS_WRITTEN: &[&str] = &[
    "ContainerStateTerminated.exit_code",
    "ContainerStatus.restart_count",
    "ContainerStatus.ready",
];

fn main() -> anyhow::Result<()> {
    let files = [
        "proto/skiff/v1/types.proto",
        "proto/skiff/v1/api.proto",
        "proto/skiff/v1/pods.proto",
        "proto/skiff/v1/bootstrap.proto",
        "proto/skiff/v1/auth.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;

    let mut config = tonic_prost_build::configure()
        .btree_map(".")
        // Watch events are encoded once and shared by every watcher.
        .bytes(".skiff.v1.WatchEvent.raw")
        .build_client(true)
        .build_server(true);

    for file in fds
        .file
        .iter()
        .filter(|f| f.name().ends_with("types.proto"))
    {
        let package = file.package();
        for msg in &file.message_type {
            if HAND_WRITTEN.contains(&msg.name()) {
                continue;
            }
            let path = format!(".{package}.{}", msg.name());
            config = config.message_attribute(
                &path,
                "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
            );
            let map_entries: Vec<String> = msg
                .nested_type
                .iter()
                .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()))
                .map(|n| n.name().to_string())
                .collect();
            for field in &msg.field {
                if ALWAYS_WRITTEN.contains(&format!("{}.{}", msg.name(), field.name()).as_str()) {
                    config = config.field_attribute(
                        format!("{path}.{}", field.name()),
                        format!("#[serde(rename = \"{}\")]", field.json_name()),
                    );
                    continue;
                }
                let is_map = field.r#type() == Type::Message
                    && map_entries
                        .iter()
                        .any(|e| field.type_name().ends_with(&format!(".{e}")));
                let skip = if is_map {
                    "::std::collections::BTreeMap::is_empty"
                } else if field.label() == Label::Repeated {
                    "::std::vec::Vec::is_empty"
                } else if field.r#type() == Type::Message || field.proto3_optional() {
                    "::std::option::Option::is_none"
                } else {
                    "crate::wire::is_default"
                };
                config = config.field_attribute(
                    format!("{path}.{}", field.name()),
                    format!(
                        "#[serde(rename = \"{}\", skip_serializing_if = \"{skip}\")]",
                        field.json_name()
                    ),
                );
            }
        }
    }
    // The descriptors themselves (comments included), for the OpenAPI
    // schema `openapi.rs` derives from them.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("skiff.fds"), prost::Message::encode_to_vec(&fds))?;
    config.compile_fds(fds)?;
    Ok(())
}
