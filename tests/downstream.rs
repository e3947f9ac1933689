//! HTTP/1.1 as clients speak it, on raw sockets: pipelined requests, bodies of every framing
//! on one keep-alive connection, `Expect: 100-continue`, HTTP/1.0, `HEAD`, `connection:
//! close`, and request heads that are refused before the chain (counted by reason). Served by
//! one thread (`worker_threads = 1`, a current-thread runtime).

use std::time::Duration;

use spindle_tests::config::{cluster, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// One serving thread: the current-thread runtime `worker_threads = 1` selects.
fn config() -> String {
    head(&["router", "balancer"])
        + &router_all_to("api")
        + &round_robin()
        + &cluster("api", &["a"])
        + "\n[runtime]\nworker_threads = 1\n"
}

/// An upstream `a` that echoes requests, behind a Spindle of [`config`].
async fn echo_proxy() -> (Upstream, Spindle) {
    let a = Upstream::start("a").await;
    a.echo();
    let sp = Spindle::start(&config(), &[&a]).await;
    (a, sp)
}

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    /// The header names as they came.
    names: Vec<String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection that reads responses one by one, keeping what follows.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(sp: &Spindle) -> Conn {
        Conn {
            s: TcpStream::connect(sp.listener_addr("edge")).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at the close.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!(
                "no answer within 10 s; have {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "closed inside a line");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// One response; `no_body` for the answer to a `HEAD`.
    async fn answer(&mut self, no_body: bool) -> Answer {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let (mut headers, mut names) = (Vec::new(), Vec::new());
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("header line");
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
            names.push(n.to_string());
        }
        let mut answer = Answer {
            status,
            headers,
            names,
            body: Vec::new(),
        };
        if no_body || status == 100 || status == 204 || status == 304 {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line().await, 16).expect("chunk size");
                if size == 0 {
                    assert_eq!(self.line().await, "", "no trailers");
                    break;
                }
                let data = self.take(size).await;
                answer.body.extend_from_slice(&data);
                assert_eq!(self.take(2).await, b"\r\n");
            }
        } else if let Some(n) = answer.header("content-length") {
            answer.body = self.take(n.parse().unwrap()).await;
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    /// Whether the server closed the connection (within 5 s) with nothing more to read.
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_bodies_of_every_framing_share_one_connection() {
    bounded(Duration::from_secs(60), async {
        let (a, sp) = echo_proxy().await;
        let mut c = Conn::open(&sp).await;
        // Three requests in one write: a GET, a POST with a length, a chunked POST.
        c.send(
            b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
              POST /three HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nx-trailer: t\r\n\r\n",
        )
        .await;
        let one = c.answer(false).await;
        let two = c.answer(false).await;
        let three = c.answer(false).await;
        assert_eq!((one.status, one.body.as_slice()), (200, &b""[..]));
        assert_eq!((two.status, two.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(
            (three.status, three.body.as_slice()),
            (200, &b"abcdefg"[..])
        );
        assert!(two.header("date").is_some(), "a date is added: {two:?}");
        let paths: Vec<String> = a.seen().iter().map(|s| s.path.clone()).collect();
        assert_eq!(paths, ["/one", "/two", "/three"]);
        // The connection still serves: a body split over several writes.
        c.send(b"PUT /four HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nab")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(b"cdef").await;
        let four = c.answer(false).await;
        assert_eq!((four.status, four.body.as_slice()), (200, &b"abcdef"[..]));
        assert_eq!(a.seen()[3].body.as_ref(), b"abcdef");
        // `connection: close` is answered, then the connection closes.
        c.send(b"GET /five HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let five = c.answer(false).await;
        assert_eq!(five.status, 200);
        assert_eq!(five.header("connection"), Some("close"));
        assert!(c.closed().await);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_http10_and_head_are_answered_as_clients_expect() {
    bounded(Duration::from_secs(60), async {
        let (a, sp) = echo_proxy().await;

        // Expect: 100-continue gets its interim answer before the body is sent.
        let mut c = Conn::open(&sp).await;
        c.send(
            b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
        )
        .await;
        let interim = c.answer(false).await;
        assert_eq!(interim.status, 100);
        c.send(b"data").await;
        let done = c.answer(false).await;
        assert_eq!((done.status, done.body.as_slice()), (200, &b"data"[..]));
        assert!(
            a.seen()[0].headers.get("expect").is_none(),
            "the expectation was met here, not passed on"
        );

        // HEAD: the head only, and the connection goes on.
        c.send(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /g HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let head = c.answer(true).await;
        assert_eq!(head.status, 200);
        let get = c.answer(false).await;
        assert_eq!(get.status, 200);

        // HTTP/1.0 with keep-alive stays open and says so; without it, closes.
        let mut old = Conn::open(&sp).await;
        old.send(b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await;
        let first = old.answer(false).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.header("connection"), Some("keep-alive"));
        old.send(b"GET /b HTTP/1.0\r\n\r\n").await;
        let second = old.answer(false).await;
        assert_eq!(second.status, 200);
        assert!(old.closed().await, "HTTP/1.0 without keep-alive closes");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_and_garbage_are_refused_and_counted() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(&config(), &[&a]).await;
        for bad in [
            &b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HELLO THERE\r\n\r\n",
        ] {
            let mut c = Conn::open(&sp).await;
            c.send(bad).await;
            let answer = c.answer(false).await;
            assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(answer.header("connection"), Some("close"));
            assert!(c.closed().await);
        }
        assert_eq!(a.count(), 0, "nothing reached the upstream");
        let rejected = sp
            .metric(
                "spindle_downstream_rejected_total",
                &[("listener", "edge"), ("reason", "bad_request")],
            )
            .await;
        assert_eq!(rejected, Some(4.0));
        // A request body that ends early fails that request only.
        let mut c = Conn::open(&sp).await;
        c.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nshort").await;
        c.s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = c.s.read_to_end(&mut rest).await;
        let text = String::from_utf8_lossy(&rest);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");
        assert_eq!(a.count(), 0);
    })
    .await
}

/// An endpoint that answers every request on every connection with `head` and, unless the
/// request is a `HEAD`, `body`: a response shaped by hand, names in the case written.
async fn raw_endpoint(head: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let is_head = seen.starts_with(b"HEAD ");
                        seen.drain(..end + 4);
                        let mut answer = head.as_bytes().to_vec();
                        if !is_head {
                            answer.extend_from_slice(body.as_bytes());
                        }
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_pass_as_sent_without_those_of_the_upstream_hop() {
    bounded(Duration::from_secs(60), async {
        let endpoint = raw_endpoint(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Mixed-Case: Yes\r\n\
             Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
             Upgrade: something\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
             Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\n\r\n",
            "hello",
        )
        .await;
        let config = head(&["router", "balancer"])
            + &router_all_to("api")
            + &round_robin()
            + &format!("\n[cluster.api]\nendpoints = [\"{endpoint}\"]\n")
            + "\n[runtime]\nworker_threads = 1\n";
        let sp = Spindle::start(&config, &[]).await;
        let mut c = Conn::open(&sp).await;
        c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nHEAD / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let get = c.answer(false).await;
        assert_eq!((get.status, get.body.as_slice()), (200, &b"hello"[..]));
        // End-to-end headers as the endpoint wrote them, repeated ones in order.
        for name in ["Content-Type", "X-Mixed-Case", "Date", "Set-Cookie"] {
            assert!(get.names.iter().any(|n| n == name), "{name}: {get:?}");
        }
        assert_eq!(get.header("x-mixed-case"), Some("Yes"));
        assert_eq!(get.header("date"), Some("Tue, 01 Jan 2030 00:00:00 GMT"));
        let cookies: Vec<&str> = get
            .headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        // Those of the endpoint's hop are not passed on, nor what its `connection` named;
        // the date is not doubled, the length is the body's.
        for name in ["x-hop", "keep-alive", "upgrade", "connection"] {
            assert_eq!(get.header(name), None, "{name}: {get:?}");
        }
        let count = |a: &Answer, name: &str| a.headers.iter().filter(|(n, _)| n == name).count();
        assert_eq!(count(&get, "date"), 1);
        assert_eq!(count(&get, "content-length"), 1);
        assert_eq!(get.header("content-length"), Some("5"));
        // HEAD: the endpoint's length of the body it would send.
        let head_answer = c.answer(true).await;
        assert_eq!(head_answer.status, 200);
        assert_eq!(head_answer.header("content-length"), Some("5"));
        assert_eq!(head_answer.header("x-hop"), None);

        // An HTTP/2 client gets the same headers from a map (names lower-cased).
        let resp = Client::http2()
            .get(&sp.url("edge"), &[])
            .await
            .expect("h2 response");
        assert_eq!((resp.status, resp.body.as_str()), (200, "hello"));
        assert_eq!(resp.header("x-mixed-case"), Some("Yes"));
        assert_eq!(resp.headers.get_all("set-cookie").iter().count(), 2);
        for name in ["x-hop", "keep-alive", "upgrade", "connection"] {
            assert_eq!(resp.header(name), None, "{name}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_pass_as_sent_without_those_of_the_client_hop() {
    bounded(Duration::from_secs(60), async {
        let (a, sp) = echo_proxy().await;
        let mut c = Conn::open(&sp).await;
        c.send(
            b"GET /h HTTP/1.1\r\nHost: example.test\r\nX-Custom: One\r\nConnection: X-Private\r\n\
              X-Private: secret\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Request-Id: given-id\r\n\
              X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nUser-Agent:tight\r\n\r\n",
        )
        .await;
        assert_eq!(c.answer(false).await.status, 200);
        let seen = &a.seen()[0];
        let h = &seen.headers;
        assert_eq!(h["host"], "example.test");
        assert_eq!(h["x-custom"], "One");
        assert_eq!(
            h["user-agent"], "tight",
            "a line without a space is rewritten"
        );
        assert_eq!(h["x-request-id"], "given-id");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        for name in ["connection", "x-private", "keep-alive", "te"] {
            assert!(h.get(name).is_none(), "{name} reached the upstream: {h:?}");
        }
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        // A name `connection` lists is for the client's hop, even one Spindle would add to.
        c.send(b"GET /l HTTP/1.1\r\nHost: x\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n")
            .await;
        assert_eq!(c.answer(false).await.status, 200);
        assert_eq!(a.seen()[1].headers["x-forwarded-for"], "127.0.0.1");

        // The same through an HTTP/2 client, whose headers arrive in a map.
        let resp = Client::http2()
            .get(
                &sp.url("edge"),
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-custom", "Two"),
                    ("te", "trailers"),
                ],
            )
            .await
            .expect("h2 response");
        assert_eq!(resp.status, 200);
        let seen = &a.seen()[2];
        assert_eq!(seen.headers["x-custom"], "Two");
        assert_eq!(seen.headers["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
        assert!(seen.headers.get("te").is_none());
        assert_eq!(seen.headers.get_all("x-request-id").iter().count(), 1);
    })
    .await
}
