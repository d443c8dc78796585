//! A Service Bus REST fake on loopback, serving exactly the surface `azure::servicebus` uses,
//! with the broker semantics the pipeline relies on: queues created on first use, duplicate
//! detection by MessageId (window = the fake's lifetime), scheduled messages, peek-lock with
//! lock expiry, DeliveryCount, abandon → immediate redelivery, dead-lettering at
//! MaxDeliveryCount (`MaxDeliveryCountExceeded`) into `{queue}/$DeadLetterQueue`, sessions.
//!
//! Deviation from Service Bus (documented on purpose): real session receivers are AMQP-only.
//! Here `POST {queue}/messages/head` is session-aware: it returns the oldest available message
//! whose session has no message locked, so one session is processed by one receiver at a time
//! and in order, and the session lock is released when its message is completed, abandoned or
//! its lock expires. This is what the test harness that plays the Functions host needs. Any
//! queue accepts messages with or without SessionId.
//!
//! Time: the fake's clock is wall time plus an offset tests can advance (`advance_clock`), so
//! schedules and lock expiry are tested without sleeping.
//!
//! Layout: `queue` holds the records (messages, locks, queues, entity names), `broker` the
//! state machine over them and the inspection tests use, `http` the REST front.

mod broker;
mod http;
mod queue;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{oneshot, Notify};

use queue::Queue;

/// Broker settings of every queue in the fake.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Service Bus default PT1M.
    pub lock_duration: Duration,
    /// Service Bus default 10.
    pub max_delivery_count: u32,
    /// When set, any other bearer token is refused with 401.
    pub required_token: Option<String>,
    /// The queue's size quota (`maxSizeInMegabytes`), counted in messages: a send that would
    /// hold more is refused with 403 QuotaExceeded, as the service refuses a full entity
    /// (servicebus reference §A1: send 403 on quota). `None`: no quota.
    pub max_queue_messages: Option<u64>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            required_token: None,
            max_queue_messages: None,
        }
    }
}

/// Per-queue counts, as served by `GET /_sb/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    /// Available now.
    pub active: u64,
    /// Waiting for their ScheduledEnqueueTimeUtc.
    pub scheduled: u64,
    /// Peek-locked by a receiver.
    pub locked: u64,
    pub completed: u64,
    /// In the dead-letter sub-queue.
    pub dead: u64,
}

/// A dead-lettered message, for test inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub(crate) session_id: Option<String>,
    pub(crate) body: Vec<u8>,
    pub reason: String,
    pub(crate) description: Option<String>,
    pub delivery_count: u32,
}

struct Inner {
    opts: FakeOptions,
    queues: Mutex<HashMap<String, Queue>>,
    clock_offset: Mutex<time::Duration>,
    changed: Notify,
}

/// The fake broker; cheap to clone (shared state).
#[derive(Clone)]
pub struct ServiceBusFake {
    inner: Arc<Inner>,
}

impl Default for ServiceBusFake {
    fn default() -> Self {
        Self::new(FakeOptions::default())
    }
}

impl ServiceBusFake {
    pub fn new(opts: FakeOptions) -> Self {
        ServiceBusFake {
            inner: Arc::new(Inner {
                opts,
                queues: Mutex::new(HashMap::new()),
                clock_offset: Mutex::new(time::Duration::ZERO),
                changed: Notify::new(),
            }),
        }
    }

    /// Serves this fake on `addr`.
    pub async fn listen(self, addr: SocketAddr) -> io::Result<ServiceBusServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = http::router(self.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(ServiceBusServer {
            fake: self,
            addr,
            stop: tx,
            handle,
        })
    }

    /// The fake's current time (wall clock plus the test offset).
    pub(crate) fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + *self.inner.clock_offset.lock().expect("clock")
    }

    /// Moves the fake's clock forward: schedules come due, locks expire.
    pub fn advance_clock(&self, by: Duration) {
        *self.inner.clock_offset.lock().expect("clock") += by;
        self.inner.changed.notify_waiters();
    }
}

/// A running fake.
pub struct ServiceBusServer {
    fake: ServiceBusFake,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl ServiceBusServer {
    /// Base URL, e.g. `http://127.0.0.1:41234` (the client's endpoint).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn fake(&self) -> &ServiceBusFake {
        &self.fake
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}
