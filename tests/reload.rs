//! Reloading a running proxy: open tunnels untouched under traffic, new
//! handshakes on the new configuration at once, broken or unbindable
//! configurations changing nothing, listeners added and removed, servers
//! removed from an upstream draining.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate::config::Config;
use wsgate::server::reload::{ReloadError, Reloader};

const ORIGIN_A: &str = "https://a.example";
const ORIGIN_B: &str = "https://b.example";

fn parse(toml: &str) -> Config {
    let path = std::env::temp_dir().join("wsgate-tests").join("reload.toml");
    Config::from_toml(toml, &path).unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config:\n{toml}"))
}

/// Listener `plain` (plus `extra` listeners at the given addresses), one
/// route allowing `origins`, to `servers`.
fn config_with(origins: &[&str], servers: &[SocketAddr], extra: &[(&str, &str)]) -> String {
    let mut toml = listeners(None);
    for (name, listen) in extra {
        toml += &format!("[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\n\n");
    }
    let origins: Vec<String> = origins.iter().map(|o| format!("\"{o}\"")).collect();
    let servers: Vec<String> = servers.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    toml + &format!(
        "[[route]]\nname = \"all\"\nupstream = \"backends\"\nallowed_origins = [{}]\n\n\
         [[upstream]]\nname = \"backends\"\nservers = [{}]\n",
        origins.join(", "),
        servers.join(", ")
    )
}

async fn start(toml: &str) -> (ProxyHandle, Reloader) {
    let (server, names) = bind_proxy(toml).await;
    let reloader = server.reloader();
    (run_proxy(server, names), reloader)
}

/// Numbered messages, each echo checked, until `stop` says so (at most 2,000).
async fn traffic(mut ws: WebSocketStream<TcpStream>, id: usize, mut stop: watch::Receiver<bool>) -> usize {
    let mut sent = 0;
    while !*stop.borrow_and_update() && sent < 2_000 {
        let text = format!("{id}:{sent}");
        within("send", ws.send(Message::text(text.clone()))).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(text), "tunnel {id}");
        sent += 1;
    }
    within("close", ws.close(None)).await.unwrap();
    while let Some(Ok(message)) = within("end of stream", ws.next()).await {
        assert!(matches!(message, Message::Close(_)), "tunnel {id}: {message:?}");
    }
    sent
}

#[tokio::test]
async fn a_reload_under_traffic_drops_nothing_and_new_handshakes_follow_it() {
    let backend = Backend::echo().await;
    let v1 = config_with(&[ORIGIN_A], &[backend.addr], &[]);
    let (proxy, reloader) = start(&v1).await;
    let addr = proxy.addr("plain");
    assert_eq!(upgrade_status(addr, ORIGIN_B).await, 403);

    let (stop, stopped) = watch::channel(false);
    let mut tunnels = Vec::new();
    for id in 0..100 {
        let (ws, _) = ws_connect(addr, "/", &[("Origin", ORIGIN_A)]).await;
        tunnels.push(tokio::spawn(traffic(ws, id, stopped.clone())));
    }

    let reloaded = within(
        "reload",
        reloader.reload(parse(&config_with(&[ORIGIN_A, ORIGIN_B], &[backend.addr], &[]))),
    )
    .await
    .expect("reload");
    assert_eq!(reloaded.generation, 2);
    assert_eq!(reloaded.listeners, [("plain".to_string(), addr)]);
    assert_eq!(
        upgrade_status(addr, ORIGIN_B).await,
        101,
        "the new origin is allowed at once"
    );

    // A broken file changes nothing: origin B stays allowed, tunnels flow on.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[[route]]\nname = \"all\"\nupstream = \"nowhere\"\nallowed_origin = 3\n",
    )
    .unwrap();
    match within("broken reload", reloader.reload_file(&broken)).await {
        Err(ReloadError::Config(errors)) => {
            let text = errors.to_string();
            assert!(text.contains("broken.toml"), "the error names the file: {text}");
        }
        other => panic!("a broken file reloaded: {other:?}"),
    }
    assert_eq!(upgrade_status(addr, ORIGIN_B).await, 101);
    assert_eq!(upgrade_status(addr, "https://c.example").await, 403);

    stop.send(true).unwrap();
    for tunnel in tunnels {
        let sent = within("a tunnel's traffic", tunnel).await.expect("tunnel task");
        assert!(sent > 0, "a tunnel carried no message");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn listeners_are_added_and_removed_and_open_tunnels_outlive_theirs() {
    let backend = Backend::echo().await;
    let (proxy, reloader) = start(&config_with(&[ORIGIN_A], &[backend.addr], &[])).await;
    let plain = proxy.addr("plain");
    let (mut old, _) = ws_connect(plain, "/", &[("Origin", ORIGIN_A)]).await;

    let added = config_with(&[ORIGIN_A], &[backend.addr], &[("extra", "127.0.0.1:0")]);
    let reloaded = within("reload", reloader.reload(parse(&added))).await.expect("reload");
    let extra = reloaded
        .listeners
        .iter()
        .find(|(name, _)| name == "extra")
        .map(|(_, addr)| *addr)
        .expect("the new listener is listed");
    let (mut fresh, _) = ws_connect(extra, "/", &[("Origin", ORIGIN_A)]).await;
    assert_echo(&mut fresh, Message::text("through the new listener")).await;

    // Only `extra` is left: `plain` stops accepting, its tunnel goes on.
    let mut only_extra = String::from("[global]\nshutdown_timeout = \"2s\"\n\n");
    only_extra += &format!("[[listener]]\nname = \"extra\"\nlisten = \"{extra}\"\n\n");
    only_extra += &config_with(&[ORIGIN_A], &[backend.addr], &[])
        .split_once("[[route]]")
        .map(|(_, rest)| format!("[[route]]{rest}"))
        .unwrap();
    let reloaded = within("reload", reloader.reload(parse(&only_extra)))
        .await
        .expect("reload");
    assert_eq!(
        reloaded.listeners,
        [("extra".to_string(), extra)],
        "extra kept its socket"
    );
    within("plain refusing connections", async {
        // The accept loop ends as soon as it sees the cancellation.
        loop {
            if TcpStream::connect(plain).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_echo(&mut old, Message::text("the old tunnel still flows")).await;
    assert_echo(&mut fresh, Message::text("and the new one")).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_server_removed_from_an_upstream_drains() {
    let (a, b) = (Backend::echo().await, Backend::echo().await);
    let (proxy, reloader) = start(&config_with(&[ORIGIN_A], &[a.addr], &[])).await;
    let addr = proxy.addr("plain");
    let (mut on_a, _) = ws_connect(addr, "/", &[("Origin", ORIGIN_A)]).await;
    assert_echo(&mut on_a, Message::text("on a")).await;
    assert_eq!(a.accepts(), 1);

    within(
        "reload",
        reloader.reload(parse(&config_with(&[ORIGIN_A], &[b.addr], &[]))),
    )
    .await
    .expect("reload");
    let (mut on_b, _) = ws_connect(addr, "/", &[("Origin", ORIGIN_A)]).await;
    assert_echo(&mut on_b, Message::text("on b")).await;
    assert_eq!((a.accepts(), b.accepts()), (1, 1), "the new tunnel went to b");
    assert_echo(&mut on_a, Message::text("a's tunnel outlives its removal")).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_that_cannot_bind_a_new_listener_changes_nothing() {
    let backend = Backend::echo().await;
    let (proxy, reloader) = start(&config_with(&[ORIGIN_A], &[backend.addr], &[])).await;
    let addr = proxy.addr("plain");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let both = config_with(&[ORIGIN_A, ORIGIN_B], &[backend.addr], &[("extra", &taken_addr)]);
    match within("reload", reloader.reload(parse(&both))).await {
        Err(ReloadError::Bind(error)) => {
            let text = error.to_string();
            assert!(text.contains("\"extra\"") && text.contains(&taken_addr), "{text}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    assert_eq!(
        upgrade_status(addr, ORIGIN_B).await,
        403,
        "the new origin is not in force"
    );
    assert_eq!(upgrade_status(addr, ORIGIN_A).await, 101);
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_after_the_server_stopped_says_so() {
    let backend = Backend::echo().await;
    let (proxy, reloader) = start(&config_with(&[ORIGIN_A], &[backend.addr], &[])).await;
    proxy.stop().await;
    let config = parse(&config_with(&[ORIGIN_A], &[backend.addr], &[]));
    assert!(matches!(reloader.reload(config).await, Err(ReloadError::NotRunning)));
    let missing = Path::new("/nonexistent/wsgate.toml");
    assert!(matches!(
        reloader.reload_file(missing).await,
        Err(ReloadError::NotRunning)
    ));
}

#[tokio::test]
async fn open_tunnels_still_count_against_a_route_cap_after_a_reload() {
    let backend = Backend::echo().await;
    let capped = |max: usize| {
        config_with(&[ORIGIN_A], &[backend.addr], &[]).replace(
            "allowed_origins",
            &format!("limits = {{ max_websockets = {max} }}\nallowed_origins"),
        )
    };
    let (proxy, reloader) = start(&capped(1)).await;
    let addr = proxy.addr("plain");
    let (mut held, _) = ws_connect(addr, "/", &[("Origin", ORIGIN_A)]).await;
    assert_eq!(upgrade_status(addr, ORIGIN_A).await, 503, "the cap of 1 is full");
    within("reload", reloader.reload(parse(&capped(1))))
        .await
        .expect("reload");
    assert_eq!(
        upgrade_status(addr, ORIGIN_A).await,
        503,
        "the held tunnel still counts"
    );
    within("reload", reloader.reload(parse(&capped(2))))
        .await
        .expect("reload");
    let (mut second, _) = ws_connect(addr, "/", &[("Origin", ORIGIN_A)]).await;
    assert_eq!(
        upgrade_status(addr, ORIGIN_A).await,
        503,
        "1 held + 1 new fill the new cap of 2"
    );
    assert_echo(&mut held, Message::text("held")).await;
    assert_echo(&mut second, Message::text("second")).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_tls_handshakes_after_a_reload() {
    let (old, new) = (TestCerts::generate(), TestCerts::generate());
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site-key.pem"));
    std::fs::copy(old.server_cert(), &cert).unwrap();
    std::fs::copy(old.server_key(), &key).unwrap();
    let toml = "[global]\nshutdown_timeout = \"2s\"\n\n[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n"
        .to_string()
        + &tls_entry(&cert, &key)
        + "\n"
        + &route_and_upstream(backend.addr, "");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, &toml).unwrap();
    let (server, names) = bind_proxy(&toml).await;
    let reloader = server.reloader();
    let proxy = run_proxy(server, names);
    let addr = proxy.addr("tls");
    let served = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
        stream.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
    };
    let before = tls_connect(addr, "localhost", old.client_config()).await;
    assert_eq!(&served(&before), old.server_der());

    // Renewal: new files at the same paths, then a reload.
    std::fs::copy(new.server_cert(), &cert).unwrap();
    std::fs::copy(new.server_key(), &key).unwrap();
    within("reload", reloader.reload_file(&path)).await.expect("reload");
    let after = tls_connect(addr, "localhost", new.client_config()).await;
    assert_eq!(&served(&after), new.server_der());
    // The connection made before the reload is still served.
    let (mut ws, _) = ws_handshake(before, &format!("wss://localhost:{}/", addr.port()), &[]).await;
    assert_echo(&mut ws, Message::text("on the connection from before")).await;
    within("close", ws.close(None)).await.unwrap();
    proxy.stop().await;
}
