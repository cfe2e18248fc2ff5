//! `Context`: a start method chosen once, used for many processes (Python's
//! `multiprocessing.get_context`).
use crate::{Process, ProcessError, StartMethod};
use mproc_core::Message;

/// A start method to create processes with (Python's context objects). Pass it to code
/// that starts processes so that the caller chooses how.
///
/// ```
/// use mproc_spawn::{StartMethod, get_context};
/// fn add((a, b): (u32, u32)) -> u32 { a + b }
///
/// let ctx = get_context(StartMethod::Spawn);
/// let mut p = ctx.process(add, (2, 3));
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), 5);
/// assert_eq!(ctx.start_method(), StartMethod::Spawn);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Context {
    method: Option<StartMethod>,
}

/// A context for `method` (Python's `get_context("spawn")`; parse a name with
/// `"spawn".parse::<StartMethod>()`).
pub fn get_context(method: StartMethod) -> Context {
    Context {
        method: Some(method),
    }
}

impl Context {
    /// The default context: it follows the process-wide default
    /// ([`get_start_method`](crate::get_start_method)) at each start (Python's
    /// `get_context()`).
    pub fn default_context() -> Context {
        Context { method: None }
    }

    /// The start method this context uses now.
    pub fn start_method(&self) -> StartMethod {
        self.method.unwrap_or_else(crate::get_start_method)
    }

    /// A process of this context (Python's `ctx.Process(target=…, args=…)`).
    pub fn process<A, R>(&self, target: fn(A) -> R, args: A) -> Process<R>
    where
        A: Message + Send + 'static,
        R: Message + 'static,
    {
        let p = Process::new(target, args);
        match self.method {
            Some(m) => p.start_method(m),
            None => p,
        }
    }

    /// A process of this context, started.
    pub fn spawn<A, R>(&self, target: fn(A) -> R, args: A) -> Result<Process<R>, ProcessError>
    where
        A: Message + Send + 'static,
        R: Message + 'static,
    {
        let mut p = self.process(target, args);
        p.start()?;
        Ok(p)
    }
}
