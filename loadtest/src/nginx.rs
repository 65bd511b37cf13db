//! nginx terminating TLS in front of a plain ringecho, for `compare --tls`:
//! one worker process, the WebSocket `location` block of
//! `docs/deployment.md` (read from the doc as built into this binary, so
//! the harness proxies exactly as operators are told to), run from a
//! directory of its own so it needs no root and leaves nothing behind.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{spawn_pinned, Server};

/// The deployment guide, whose nginx block is the one proxied through.
const DEPLOYMENT_MD: &str = include_str!("../../docs/deployment.md");
/// The upstream address the documented block names.
const DOC_UPSTREAM: &str = "127.0.0.1:9001";

/// The `location / { ... }` block of `doc`, pointed at `upstream`.
pub fn documented_location(doc: &str, upstream: SocketAddr) -> Result<String, String> {
    let start = doc
        .find("location / {")
        .ok_or("docs/deployment.md has no nginx `location / {` block")?;
    let len = doc[start..]
        .find("\n}")
        .ok_or("docs/deployment.md: the nginx location block does not end")?;
    let block = &doc[start..start + len + 2];
    let wanted = format!("proxy_pass http://{DOC_UPSTREAM};");
    if !block.contains(&wanted) {
        return Err(format!(
            "docs/deployment.md: the nginx location block no longer says {wanted}"
        ));
    }
    Ok(block.replace(DOC_UPSTREAM, &upstream.to_string()))
}

/// A complete nginx.conf: a master and one worker, everything it writes
/// under `dir`, TLS 1.3 only on `listen` with `cert` and `key`, `location`
/// inside. ALPN needs no line: nginx's http module selects http/1.1 when
/// the client offers it.
pub fn config(
    dir: &Path,
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    location: &str,
    connections: usize,
) -> String {
    let d = dir.display();
    // Each client connection is two to nginx: in from the client, out to
    // the backend.
    let worker_connections = (2 * connections + 64).max(1024);
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         worker_rlimit_nofile {nofile};\n\
         pid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections {worker_connections}; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n\
         server {{\n\
         listen {listen} ssl;\n\
         ssl_protocols TLSv1.3;\n\
         ssl_certificate {cert};\n\
         ssl_certificate_key {key};\n\
         {location}\n\
         }}\n\
         }}\n",
        nofile = worker_connections + 64,
        cert = cert.display(),
        key = key.display(),
    )
}

/// Processes whose parent is `pid`, from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; state and ppid
    // follow the last ')'.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// nginx running; stopped (its master, which stops the worker), and its
/// directory removed, on drop.
pub struct Nginx {
    server: Option<Server>,
    dir: PathBuf,
    pub addr: SocketAddr,
    pub master: u32,
    pub worker: u32,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master first: it may still write its pid file and logs there.
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start `nginx` (a binary name or path), pinned to `cpus`, terminating
/// TLS with `cert` and `key` in front of `upstream`; wait until it listens
/// and its worker is up.
pub fn start(
    nginx: &Path,
    cert: &Path,
    key: &Path,
    upstream: SocketAddr,
    cpus: &[usize],
    connections: usize,
) -> Result<Nginx, String> {
    let location = documented_location(DEPLOYMENT_MD, upstream)?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for nginx: {e}"))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = std::env::temp_dir().join(format!("loadtest-nginx-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // nginx resolves relative paths against its prefix, not our directory.
    let absolute = |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    let conf = config(
        &dir,
        addr,
        &absolute(cert)?,
        &absolute(key)?,
        &location,
        connections,
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stdin(Stdio::null());
    let child = spawn_pinned(cmd, cpus).map_err(|e| {
        format!(
            "{}: {e} (nginx is installed by .ci/test.sh; --nginx PATH names another)",
            nginx.display()
        )
    })?;
    let master = child.id();
    let mut n = Nginx {
        server: Some(Server {
            child,
            addr,
            metrics: None,
        }),
        dir,
        addr,
        master,
        worker: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(Some(status)) = n.server.as_mut().map(|s| s.child.try_wait().ok().flatten()) {
            return Err(format!(
                "nginx exited at start-up ({status}); see its stderr"
            ));
        }
        let workers = children(master);
        if workers.len() == 1 && TcpStream::connect(addr).is_ok() {
            n.worker = workers[0];
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nginx did not listen on {addr} with one worker within 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_block_is_the_one_proxied_through() {
        let up: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let block = documented_location(DEPLOYMENT_MD, up).unwrap();
        assert!(block.starts_with("location / {") && block.ends_with('}'));
        assert!(
            block.contains("proxy_pass http://127.0.0.1:4242;"),
            "{block}"
        );
        assert!(block.contains("proxy_set_header Upgrade $http_upgrade;"));
        assert!(!block.contains(DOC_UPSTREAM));
        let bad = documented_location("location / {\n proxy_pass http://x;\n}\n", up);
        assert!(bad.is_err());
        assert!(documented_location("no block here", up).is_err());
    }

    #[test]
    fn config_runs_one_worker_from_its_own_directory_with_tls13() {
        let dir = Path::new("/tmp/x");
        let c = config(
            dir,
            "127.0.0.1:8443".parse().unwrap(),
            Path::new("/c.pem"),
            Path::new("/k.pem"),
            "location / {\n}",
            2000,
        );
        for line in [
            "master_process on;",
            "worker_processes 1;",
            "pid /tmp/x/nginx.pid;",
            "listen 127.0.0.1:8443 ssl;",
            "ssl_protocols TLSv1.3;",
            "ssl_certificate /c.pem;",
            "ssl_certificate_key /k.pem;",
            "proxy_temp_path /tmp/x/proxy;",
            "worker_connections 4064;",
        ] {
            assert!(c.contains(line), "{line}\n{c}");
        }
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
    }

    #[test]
    fn finds_its_own_children() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let kids = children(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&child.id()), "{kids:?}");
        assert_eq!(parent_of(child.id()), None);
    }
}
