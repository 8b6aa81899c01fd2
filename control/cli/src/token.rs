//! `skiff token create|list|delete`: the join tokens nodes join with.

use anyhow::{Result, bail};
use skiff_api::v1::{CreateTokenRequest, DeleteTokenRequest, ListTokensRequest};
use skiff_client::Client;

use crate::args::TokenCommand;

/// `30m`, `24h`, `7d`, `90s`, or plain seconds; `0` is forever.
pub fn parse_ttl(text: &str) -> Result<i64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: i64 = match digits.parse() {
        Ok(n) => n,
        Err(_) => bail!("--ttl {text:?}: expected a number and a unit (s, m, h, d), e.g. 24h"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("--ttl {text:?}: the unit must be s, m, h or d"),
    };
    n.checked_mul(scale)
        .ok_or_else(|| anyhow::anyhow!("--ttl {text:?}: too long"))
}

fn when(unix: i64) -> String {
    if unix == 0 {
        return "<forever>".into();
    }
    skiff_api::v1::Time {
        seconds: unix,
        nanos: 0,
    }
    .to_rfc3339()
}

pub async fn run(client: &Client, cmd: TokenCommand) -> Result<()> {
    let refused = |s: tonic::Status| anyhow::anyhow!("{}", s.message());
    match cmd {
        TokenCommand::Create { ttl, description } => {
            let t = client
                .bootstrap()
                .create_token(CreateTokenRequest {
                    ttl_seconds: parse_ttl(&ttl)?,
                    description,
                })
                .await
                .map_err(refused)?
                .into_inner();
            println!("{}", t.token);
        }
        TokenCommand::List => {
            let all = client
                .bootstrap()
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .tokens;
            let rows: Vec<Vec<String>> = all
                .into_iter()
                .map(|t| vec![t.id, when(t.expires), when(t.created), t.description])
                .collect();
            println!(
                "{}",
                crate::table::render(&["ID", "EXPIRES", "CREATED", "DESCRIPTION"], &rows)
            );
        }
        TokenCommand::Delete { id } => {
            client
                .bootstrap()
                .delete_token(DeleteTokenRequest { id: id.clone() })
                .await
                .map_err(refused)?;
            println!("token {id} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h").unwrap(), 86400);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("7d").unwrap(), 7 * 86400);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("0").unwrap(), 0);
        for bad in ["", "h", "5w", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
