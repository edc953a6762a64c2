//! The request body every `automation.v1` call reads through: it follows the
//! gRPC framing (a compression flag and a big-endian length before each
//! message) as the bytes arrive and
//! - ends the body with a refusal at the first message over its method's cap,
//!   before any of that message is passed on (so nothing buffers it);
//! - for the methods that carry JSON documents ([`Check`]), gathers each
//!   message whole, looks at it ([`inspect`]: a document too large as JSON
//!   is refused by name, its cost estimated) and passes it on to be decoded
//!   only once the request budget has room for it ([`RequestBudget`]).
//!
//! Messages of other methods, and compressed ones (which the server does
//! not accept, so the decoder refuses them), stream through untouched.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;
use tonic::{Status, body::Body};

use super::{
    budget::{Hold, Lease, RequestBudget, Waiting},
    cap::MessageCap,
    inspect::{JsonLimits, Shape, inspect},
};
use crate::error::AppError;

/// A Work message whose estimated cost is below this is handled without
/// waiting for the budget: heartbeats, credits and ordinary reports must
/// never queue behind large requests, and a stream handles one message at a
/// time, so what it holds this way stays under this bound.
pub const STREAM_FREE_COST: usize = 256 * 1024;

/// How the messages of one call are looked at and budgeted.
#[derive(Debug, Clone)]
pub struct Check {
    /// Which documents the messages carry.
    pub shape: Shape,
    /// Their bounds.
    pub limits: JsonLimits,
    /// The replica's budget.
    pub budget: RequestBudget,
    /// A unary call's shares, kept until its response is sent; `None` on a
    /// stream, whose message's share is given back when the next message is
    /// asked for (and which reserves nothing to receive: it reads one
    /// message at a time).
    pub hold: Option<Hold>,
}

impl Check {
    /// The field a refusal for the whole message names.
    fn field(&self) -> &'static str {
        match self.shape {
            Shape::CreateJob => "payload",
            Shape::BatchCreateJobs => "requests",
            Shape::RegisterModule => "manifest",
            Shape::UpdateModule => "module",
            Shape::Work => "kind",
            Shape::CreateSchedule => "job_template",
            Shape::UpdateSchedule => "schedule",
        }
    }
}

enum State {
    /// Reading a message's prefix.
    Prefix,
    /// Passing a message's remaining bytes on as they come.
    Passing { left: usize },
    /// Waiting for room to receive a message of `len` bytes.
    Reserving { len: usize, waiting: Waiting },
    /// Gathering a message.
    Collecting {
        message: BytesMut,
        left: usize,
        receipt: Option<Lease>,
        deadline: Option<Pin<Box<Sleep>>>,
    },
    /// Waiting for room to handle a gathered message.
    Admitting {
        message: Bytes,
        waiting: Waiting,
        receipt: Option<Lease>,
    },
}

/// See the module documentation.
pub struct CheckedBody {
    inner: Body,
    cap: MessageCap,
    check: Option<Check>,
    /// Received bytes not yet followed.
    pending: Bytes,
    prefix: [u8; 5],
    prefix_read: usize,
    state: State,
    /// The shares of the messages a stream last passed on.
    delivered: Vec<Lease>,
    /// Trailers, passed on once everything before them is.
    trailers: Option<Frame<Bytes>>,
    inner_done: bool,
    refusal: Option<Status>,
    ended: bool,
}

impl CheckedBody {
    /// `inner`, held to `cap`, and looked at as `check` says.
    pub fn new(inner: Body, cap: MessageCap, check: Option<Check>) -> Self {
        Self {
            inner,
            cap,
            check,
            pending: Bytes::new(),
            prefix: [0; 5],
            prefix_read: 0,
            state: State::Prefix,
            delivered: Vec::new(),
            trailers: None,
            inner_done: false,
            refusal: None,
            ended: false,
        }
    }

    /// Ends the body with `error`, after what was already passed on; every
    /// share this body holds is given back.
    fn refuse(&mut self, error: impl Into<Status>) {
        self.refusal = Some(error.into());
        self.state = State::Prefix;
        self.pending = Bytes::new();
        self.delivered.clear();
    }

    /// A complete prefix: what to do with its message. Returns the prefix to
    /// pass on when the message streams through.
    fn on_prefix(&mut self) -> Option<Bytes> {
        let [flag, a, b, c, d] = self.prefix;
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > self.cap.max_bytes {
            self.refuse(self.cap.refusal(len));
            return None;
        }
        match &self.check {
            Some(check) if flag == 0 => {
                self.state = match &check.hold {
                    Some(_) => State::Reserving {
                        len,
                        waiting: check.budget.receive(len + self.prefix.len()),
                    },
                    None => self.collecting(len, None),
                };
                None
            }
            _ => {
                self.state = State::Passing { left: len };
                Some(Bytes::copy_from_slice(&self.prefix))
            }
        }
    }

    fn collecting(&self, len: usize, receipt: Option<Lease>) -> State {
        let mut message = BytesMut::with_capacity(self.prefix.len() + len);
        message.extend_from_slice(&self.prefix);
        let deadline = receipt
            .as_ref()
            .and(self.check.as_ref())
            .map(|check| Box::pin(tokio::time::sleep(check.budget.settings().receive_timeout)));
        State::Collecting {
            message,
            left: len,
            receipt,
            deadline,
        }
    }

    /// A message gathered whole: looked at, then on to wait for its share
    /// (or passed on at once when a stream's message costs little).
    fn admit(&mut self, message: Bytes, receipt: Option<Lease>) -> Option<Bytes> {
        let check = self
            .check
            .as_ref()
            .expect("only checked messages are gathered");
        let (shape, limits, field) = (check.shape, check.limits, check.field());
        let streaming = check.hold.is_none();
        let seen = match inspect(shape, &message[self.prefix.len()..], limits) {
            Ok(seen) => seen,
            Err(error) => {
                self.refuse(error);
                return None;
            }
        };
        if streaming && seen.cost_bytes < STREAM_FREE_COST {
            self.state = State::Prefix;
            return Some(message);
        }
        match check_budget(&self.check).handle(seen.cost_bytes, field) {
            Ok(waiting) => {
                self.state = State::Admitting {
                    message,
                    waiting,
                    receipt,
                };
            }
            Err(error) => self.refuse(error),
        }
        None
    }

    /// A message's share, taken: kept for its call, or until a stream asks
    /// for its next message.
    fn keep(&mut self, lease: Lease) {
        match self.check.as_ref().and_then(|check| check.hold.as_ref()) {
            Some(hold) => hold.keep(lease),
            None => self.delivered.push(lease),
        }
    }

    /// One step on the received bytes or a wait; `Ready(Some)` to pass a
    /// frame on, `Ready(None)` when more input is needed.
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match &mut self.state {
            State::Prefix => {
                if self.pending.is_empty() {
                    return Poll::Ready(None);
                }
                let step = (self.prefix.len() - self.prefix_read).min(self.pending.len());
                let bytes = self.pending.split_to(step);
                self.prefix[self.prefix_read..self.prefix_read + step].copy_from_slice(&bytes);
                self.prefix_read += step;
                if self.prefix_read < self.prefix.len() {
                    return Poll::Ready(None);
                }
                self.prefix_read = 0;
                match self.on_prefix() {
                    Some(prefix) => {
                        if let State::Passing { left: 0 } = self.state {
                            self.state = State::Prefix;
                        }
                        Poll::Ready(Some(prefix))
                    }
                    None if self.refusal.is_some() => Poll::Ready(None),
                    // On to reserve or gather.
                    None => self.step(cx),
                }
            }
            State::Passing { left } => {
                if self.pending.is_empty() {
                    return Poll::Ready(None);
                }
                let out = self.pending.split_to((*left).min(self.pending.len()));
                *left -= out.len();
                if *left == 0 {
                    self.state = State::Prefix;
                }
                Poll::Ready(Some(out))
            }
            State::Reserving { len, waiting } => {
                let len = *len;
                match ready!(waiting.as_mut().poll(cx)) {
                    Ok(receipt) => {
                        self.state = self.collecting(len, Some(receipt));
                        self.step(cx)
                    }
                    Err(error) => {
                        self.refuse(error);
                        Poll::Ready(None)
                    }
                }
            }
            State::Collecting {
                message,
                left,
                receipt,
                deadline,
            } => {
                let step = (*left).min(self.pending.len());
                message.extend_from_slice(&self.pending.split_to(step));
                *left -= step;
                if *left > 0 {
                    // More is needed: the deadline is watched while waiting
                    // for it.
                    if let Some(deadline) = deadline
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        let timeout = self.check.as_ref().map(|c| c.budget.settings());
                        let seconds = timeout.map_or(0.0, |s| s.receive_timeout.as_secs_f64());
                        self.refuse(AppError::LimitExceeded {
                            limit: super::budget::LIMIT,
                            message: format!(
                                "the message did not arrive within {seconds} s of its \
                                 length prefix, while its room in the budget was kept for it"
                            ),
                            retry_after: std::time::Duration::from_secs(1),
                        });
                    }
                    return Poll::Ready(None);
                }
                let message = std::mem::take(message).freeze();
                let receipt = receipt.take();
                match self.admit(message, receipt) {
                    Some(out) => Poll::Ready(Some(out)),
                    None => self.step(cx),
                }
            }
            State::Admitting {
                message,
                waiting,
                receipt,
            } => match ready!(waiting.as_mut().poll(cx)) {
                Ok(lease) => {
                    // Now counted in the handling pool: the receiving share
                    // goes back.
                    drop(receipt.take());
                    let message = std::mem::take(message);
                    self.keep(lease);
                    self.state = State::Prefix;
                    Poll::Ready(Some(message))
                }
                Err(error) => {
                    self.refuse(error);
                    Poll::Ready(None)
                }
            },
        }
    }
}

fn check_budget(check: &Option<Check>) -> &RequestBudget {
    &check
        .as_ref()
        .expect("only checked messages are budgeted")
        .budget
}

impl http_body::Body for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        // The messages passed on before have been decoded: a stream is
        // asking for its next one.
        this.delivered.clear();
        loop {
            if let Some(refusal) = this.refusal.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(refusal)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(out) = ready!(this.step(cx)) {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if this.refusal.is_some() {
                continue;
            }
            if !this.pending.is_empty() {
                continue;
            }
            if this.inner_done {
                // A message cut short is passed on as far as it came, for
                // the decoder to report; then the trailers, if any.
                match std::mem::replace(&mut this.state, State::Prefix) {
                    State::Collecting { message, .. } => {
                        return Poll::Ready(Some(Ok(Frame::data(message.freeze()))));
                    }
                    _ if this.prefix_read > 0 => {
                        let partial = Bytes::copy_from_slice(&this.prefix[..this.prefix_read]);
                        this.prefix_read = 0;
                        return Poll::Ready(Some(Ok(Frame::data(partial))));
                    }
                    _ => {
                        this.ended = true;
                        return Poll::Ready(this.trailers.take().map(Ok));
                    }
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => this.inner_done = true,
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        this.inner_done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
