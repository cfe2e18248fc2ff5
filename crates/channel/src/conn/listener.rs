//! `Listener` / `Client`: Python's `multiprocessing.connection.Listener` and `Client`,
//! on Unix paths, abstract Unix names and TCP, with Python's HMAC challenge-response on
//! an auth key.
//!
//! The handshake is byte-compatible with Python 3.12 and later (`{sha256}`-prefixed
//! challenges and answers, framed as Python frames them: a 4-byte big-endian length).
//! Python 3.11 and older speak only the legacy HMAC-MD5 handshake, which is refused
//! here with an [`AuthenticationError`]. After the handshake the connection carries
//! mproc frames (rkyv), not pickles, so only the authentication interoperates.
//!
//! ```
//! use mproc_channel::{Address, Client, Listener};
//! let l = Listener::bind(Address::tcp("127.0.0.1:0".parse().unwrap()), Some(b"secret")).unwrap();
//! let addr = l.address().clone();
//! let t = std::thread::spawn(move || {
//!     let c = Client(&addr, Some(b"secret")).unwrap();
//!     c.send(&String::from("hi")).unwrap();
//! });
//! let conn = l.accept().unwrap();
//! assert_eq!(conn.recv::<String>().unwrap(), "hi");
//! t.join().unwrap();
//! ```
use super::connection::Connection;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const SHA256_PREFIX: &[u8] = b"{sha256}";
/// Random bytes in a challenge (Python 3.12's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// Longest handshake message accepted (Python's `recv_bytes(256)`).
const MAX_HANDSHAKE: usize = 256;

/// Where a [`Listener`] listens and a [`Client`] connects (Python's `address`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix socket file (Python: a path string). The listener removes it when dropped.
    Unix(PathBuf),
    /// A Linux abstract Unix socket name (Python: a string starting with `'\0'`); nothing
    /// on the file system, gone when the listener closes.
    Abstract(Vec<u8>),
    /// A TCP address (Python: `(host, port)`); port 0 picks a free port, which
    /// [`Listener::address`] then reports.
    Tcp(SocketAddr),
}

impl Address {
    /// A Unix socket file at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Address::Unix(path.into())
    }

    /// An abstract Unix socket name (without the leading NUL byte).
    pub fn abstract_name(name: impl Into<Vec<u8>>) -> Self {
        Address::Abstract(name.into())
    }

    /// A TCP address.
    pub fn tcp(addr: SocketAddr) -> Self {
        Address::Tcp(addr)
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

/// The peer failed the HMAC challenge (wrong auth key, or a protocol this side does not
/// speak): Python's `multiprocessing.AuthenticationError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticationError {
    reason: String,
}

impl AuthenticationError {
    fn new(reason: impl Into<String>) -> Self {
        AuthenticationError {
            reason: reason.into(),
        }
    }

    /// What went wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AuthenticationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "authentication failed: {}", self.reason)
    }
}

impl std::error::Error for AuthenticationError {}

/// Why [`Listener::accept`] or [`Client`] did not produce a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer failed authentication, or refused ours. No message was read.
    Authentication(AuthenticationError),
    /// The socket failed (including the peer closing during the handshake).
    Io(io::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Authentication(e) => e.fmt(f),
            ConnectError::Io(e) => write!(f, "connection failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Authentication(e) => Some(e),
            ConnectError::Io(e) => Some(e),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

impl From<AuthenticationError> for ConnectError {
    fn from(e: AuthenticationError) -> Self {
        ConnectError::Authentication(e)
    }
}

enum Sock {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A listening socket that hands out authenticated [`Connection`]s: Python's
/// `multiprocessing.connection.Listener(address, authkey=...)`.
///
/// With an auth key, [`accept`](Self::accept) challenges every client and answers its
/// challenge in turn (both directions, as Python does); a client with the wrong key is
/// refused before any message is read. Without one, no handshake happens (both sides
/// must agree). A Unix socket file is removed when the listener is dropped.
pub struct Listener {
    sock: Sock,
    address: Address,
    authkey: Option<Vec<u8>>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("authenticated", &self.authkey.is_some())
            .finish()
    }
}

fn unix_addr(address: &Address) -> io::Result<UnixSocketAddr> {
    match address {
        Address::Unix(p) => UnixSocketAddr::from_pathname(p),
        Address::Abstract(n) => UnixSocketAddr::from_abstract_name(n),
        Address::Tcp(_) => unreachable!("only called for Unix addresses"),
    }
}

impl Listener {
    /// Binds and listens on `address` (close-on-exec). `authkey`: the shared secret
    /// clients must prove they hold, or `None` for no authentication.
    ///
    /// # Errors
    /// The address is in use or invalid.
    pub fn bind(address: Address, authkey: Option<&[u8]>) -> io::Result<Self> {
        let (sock, address) = match &address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let real = l.local_addr()?;
                (Sock::Tcp(l), Address::Tcp(real))
            }
            _ => (
                Sock::Unix(UnixListener::bind_addr(&unix_addr(&address)?)?),
                address,
            ),
        };
        Ok(Listener {
            sock,
            address,
            authkey: authkey.map(<[u8]>::to_vec),
        })
    }

    /// The address clients connect to (for TCP port 0, the port chosen).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a client, authenticates it (if there is an auth key) and returns the
    /// connection.
    ///
    /// # Errors
    /// [`ConnectError::Authentication`] if the client fails the challenge (it was told
    /// `#FAILURE#` and is dropped); `Io` otherwise. The listener stays usable.
    pub fn accept(&self) -> Result<Connection, ConnectError> {
        let fd: OwnedFd = match &self.sock {
            Sock::Unix(l) => l.accept()?.0.into(),
            Sock::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                s.into()
            }
        };
        let mut stream = HandshakeStream(fd);
        if let Some(key) = &self.authkey {
            deliver_challenge(&mut stream, key)?;
            answer_challenge(&mut stream, key)?;
        }
        Ok(Connection::from_fd(stream.0)?)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(p) = &self.address {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Connects to a [`Listener`] and authenticates with `authkey` (answering the
/// listener's challenge, then challenging it): Python's
/// `multiprocessing.connection.Client(address, authkey=...)`.
///
/// # Errors
/// [`ConnectError::Authentication`] if the keys differ (or the listener speaks only
/// the legacy HMAC-MD5 handshake of Python 3.11 and older); `Io` if nothing listens.
#[allow(non_snake_case)]
pub fn Client(address: &Address, authkey: Option<&[u8]>) -> Result<Connection, ConnectError> {
    let fd: OwnedFd = match address {
        Address::Tcp(a) => {
            let s = TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            s.into()
        }
        _ => UnixStream::connect_addr(&unix_addr(address)?)?.into(),
    };
    let mut stream = HandshakeStream(fd);
    if let Some(key) = authkey {
        answer_challenge(&mut stream, key)?;
        deliver_challenge(&mut stream, key)?;
    }
    Ok(Connection::from_fd(stream.0)?)
}

/// The socket during the handshake, spoken in Python's framing.
struct HandshakeStream(OwnedFd);

impl HandshakeStream {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(4 + msg.len());
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(msg);
        let mut off = 0;
        while off < frame.len() {
            match rustix::net::send(&self.0, &frame[off..], rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => off += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            match rustix::net::recv(&self.0, &mut buf[off..], rustix::net::RecvFlags::empty()) {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the handshake",
                    ));
                }
                Ok((n, _)) => off += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one Python-framed message of at most [`MAX_HANDSHAKE`] bytes.
    fn recv(&mut self) -> Result<Vec<u8>, ConnectError> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len)?;
        let n = i32::from_be_bytes(len);
        if !(0..=MAX_HANDSHAKE as i32).contains(&n) {
            return Err(AuthenticationError::new(format!(
                "handshake message of announced length {n} refused (limit {MAX_HANDSHAKE})"
            ))
            .into());
        }
        let mut msg = vec![0u8; n as usize];
        self.read_exact(&mut msg)?;
        Ok(msg)
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Python's `deliver_challenge`: send `#CHALLENGE#{sha256}<40 random bytes>`, check the
/// answer in constant time, reply `#WELCOME#` or `#FAILURE#`.
fn deliver_challenge(s: &mut HandshakeStream, key: &[u8]) -> Result<(), ConnectError> {
    let mut random = [0u8; MESSAGE_LENGTH];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let mut message = SHA256_PREFIX.to_vec();
    message.extend_from_slice(&random);
    let mut challenge = CHALLENGE.to_vec();
    challenge.extend_from_slice(&message);
    s.send(&challenge)?;
    let response = s.recv()?;
    let verdict = match response.strip_prefix(SHA256_PREFIX) {
        Some(their_mac) if ![16, 20].contains(&response.len()) => {
            let mut m = mac(key);
            m.update(&message);
            // `verify_slice` compares in constant time (and fails on a length mismatch).
            m.verify_slice(their_mac)
                .map_err(|_| AuthenticationError::new("digest received was wrong"))
        }
        _ => Err(AuthenticationError::new(
            "the client did not answer with an HMAC-SHA256 digest \
             (Python 3.11 and older answer with legacy HMAC-MD5, which is not supported)",
        )),
    };
    match verdict {
        Ok(()) => {
            s.send(WELCOME)?;
            Ok(())
        }
        Err(e) => {
            // Best effort: the peer may already be gone.
            let _ = s.send(FAILURE);
            Err(e.into())
        }
    }
}

/// Python's `answer_challenge`: read the challenge, answer `{sha256}<HMAC>`, expect
/// `#WELCOME#`.
fn answer_challenge(s: &mut HandshakeStream, key: &[u8]) -> Result<(), ConnectError> {
    let msg = s.recv()?;
    let Some(message) = msg.strip_prefix(CHALLENGE) else {
        return Err(AuthenticationError::new("protocol error: expected a challenge").into());
    };
    if message.len() < 20 {
        return Err(AuthenticationError::new("challenge too short").into());
    }
    if !message.starts_with(SHA256_PREFIX) || [16, 20].contains(&message.len()) {
        return Err(AuthenticationError::new(
            "the listener sent a legacy or unsupported challenge (only Python 3.12+'s \
             {sha256} handshake is spoken)",
        )
        .into());
    }
    let mut m = mac(key);
    m.update(message);
    let mut response = SHA256_PREFIX.to_vec();
    response.extend_from_slice(&m.finalize().into_bytes());
    s.send(&response)?;
    let verdict = s.recv()?;
    if verdict != WELCOME {
        return Err(AuthenticationError::new("digest sent was rejected").into());
    }
    Ok(())
}
