//! `echo-backend --listen ADDR --name NAME`: the sample service the xtask lab
//! runs inside namespaces; answers every request with JSON describing it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use integration_tests::echo::{Gate, serve};

fn main() -> Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut name: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = Some(
                    args.next()
                        .context("--listen needs ADDR:PORT")?
                        .parse()
                        .context("--listen")?,
                )
            }
            "--name" => name = Some(args.next().context("--name needs a value")?),
            "-h" | "--help" => {
                println!("usage: echo-backend --listen ADDR:PORT --name NAME");
                return Ok(());
            }
            other => bail!(
                "unknown argument `{other}`; usage: echo-backend --listen ADDR:PORT --name NAME"
            ),
        }
    }
    let listen = listen.context("missing --listen ADDR:PORT")?;
    let name = name.unwrap_or_else(|| listen.to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind {listen}"))?;
        eprintln!(
            "echo-backend {name} listening on {}",
            listener.local_addr()?
        );
        serve(
            listener,
            Arc::from(name.as_str()),
            Arc::new(Gate::default()),
        )
        .await;
        Ok(())
    })
}
