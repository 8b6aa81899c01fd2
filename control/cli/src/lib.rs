//! The skiff command line: argument definitions for every subcommand (the
//! binary's `main.rs` only parses and hands off) and the client verbs —
//! `apply`, `diff`, `get`, `describe`, `delete`, `create` — with kubectl's
//! habits.
//! The verbs talk to the API server only, through `skiff-client`.

mod apply;
pub mod args;
mod auth;
pub mod config;
mod describe;
mod get;
mod rollout;
pub mod sim;
pub mod stream;
pub mod table;
mod token;

use anyhow::{Context, Result};
use skiff_client::Client;

pub use args::{
    BpfCommand, Cli, ClientCommand, Command, ImageCommand, NodeArgs, ServerArgs, SimCommand, UpArgs,
};

/// Runs one client verb. Errors carry the reason for stderr.
pub async fn run(global: &args::Global, command: ClientCommand) -> Result<()> {
    let (creds, context_namespace) = config::target(global)?;
    let client = Client::connect_with(&creds)
        .await
        .with_context(|| format!("connect to {}", creds.server))?
        .with_field_manager("skiff");
    // `-n`, else the kubeconfig context's namespace.
    let namespace = global.namespace.clone().or(context_namespace);
    match command {
        ClientCommand::Apply(a) => apply::apply(&client, namespace.as_deref(), &a).await,
        ClientCommand::Diff(d) => {
            // kubectl's exit codes: 0 the same, 1 differences, 2 trouble.
            match apply::diff(&client, namespace.as_deref(), &d).await {
                Ok(false) => Ok(()),
                Ok(true) => std::process::exit(1),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(2)
                }
            }
        }
        ClientCommand::Get(g) => get::get(&client, namespace.as_deref(), &g).await,
        ClientCommand::Describe(d) => describe::describe(&client, namespace.as_deref(), &d).await,
        ClientCommand::Delete(d) => apply::delete(&client, namespace.as_deref(), &d).await,
        ClientCommand::Create(c) => apply::create(&client, &c).await,
        ClientCommand::Logs(l) => stream::logs(&client, namespace.as_deref(), l).await,
        ClientCommand::Exec(e) => stream::exec(&client, namespace.as_deref(), e).await,
        ClientCommand::Scale(a) => rollout::scale(&client, namespace.as_deref(), &a).await,
        ClientCommand::Rollout(c) => rollout::rollout(&client, namespace.as_deref(), c).await,
        ClientCommand::Token(c) => token::run(&client, c).await,
        ClientCommand::Auth(c) => auth::run(&client, namespace.as_deref(), c).await,
    }
}

/// `skiff sim ...`: long-running like the daemons, but a client of the API.
pub async fn sim(global: &args::Global, command: SimCommand) -> Result<()> {
    let creds = config::credentials(global)?;
    let client = Client::connect_with(&creds)
        .await
        .with_context(|| format!("connect to {}", creds.server))?;
    match command {
        SimCommand::Nodes(a) => sim::nodes(&client, a).await,
    }
}
