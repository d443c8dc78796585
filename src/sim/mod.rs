//! The ARM simulator: an in-memory Azure Resource Manager served over loopback.
//!
//! A generic resource store (`store`) plus type-specific behaviour for sites (`web`) and
//! networks (`network`), reached through ARM's path routing (`routes`, which also answers LRO
//! status polls) and wrapped by ARM's platform behaviour (`server`: auth, throttling,
//! latency, its waits kept to the drawn durations by `crate::timer`; `faults`: injected and
//! random faults). Beside it, test infrastructure: the Service Bus REST fake (`servicebus`)
//! and a launcher for the Azurite storage emulator (`azurite`).

pub mod azurite;
pub mod builder;
mod contention;
mod faults;
pub mod generate;
mod network;
mod options;
mod reply;
mod routes;
mod server;
pub mod servicebus;
mod state;
mod store;
mod throttle;
mod web;

pub use crate::fleet::Fleet;
pub(crate) use options::Work;
pub use options::{
    FaultMode, FaultProfile, InjectedFault, SimOptions, SimStats, SubscriptionStats,
    UnknownFaultProfile,
};

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use state::State;
use store::Store;

/// A running simulator instance; clones share the same state.
#[derive(Clone)]
pub struct Simulator {
    inner: server::Shared,
}

impl Simulator {
    pub fn new(fleet: Fleet, options: SimOptions) -> Self {
        Self::with_store(Store::from_resources(fleet.resources), options)
    }

    /// A simulator holding what `builder` built, taken over as it is kept (no second copy
    /// of the fleet, no parsing).
    pub fn from_builder(builder: builder::FleetBuilder, options: SimOptions) -> Self {
        Self::with_store(Store::from_stored(builder.into_stored()), options)
    }

    fn with_store(store: Store, options: SimOptions) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State::new(store, options))),
        }
    }

    /// Binds `addr` (port 0 picks one), serves in a background task and returns at once.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = self.inner.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let shared = shared.clone();
            async move { server::handle(shared, req).await }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(SimServer {
            addr,
            stop: tx,
            task,
        })
    }

    /// Current resources in fleet format (same as `GET /_sim/state`).
    pub fn state(&self) -> Fleet {
        self.with_resources(|r| Fleet {
            resources: r.map(std::borrow::Cow::into_owned).collect(),
        })
    }

    /// Runs `f` over the current resources, one at a time, under the simulator's lock: reading
    /// a large fleet without a copy of it (requests wait meanwhile). The resources the store
    /// keeps parsed (VNets, a hub's holding every integration subnet) are lent, not cloned.
    pub fn with_resources<T>(
        &self,
        f: impl for<'a> FnOnce(&mut dyn Iterator<Item = std::borrow::Cow<'a, Value>>) -> T,
    ) -> T {
        let st = self.inner.lock().expect("simulator lock");
        let mut resources = st.store.all();
        f(&mut resources)
    }

    /// Counters (same as `GET /_sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.inner.lock().expect("simulator lock").stats.clone()
    }

    /// Queues a deterministic fault (same as `POST /_sim/faults`).
    pub fn inject(&self, fault: InjectedFault) {
        self.inner
            .lock()
            .expect("simulator lock")
            .injected
            .push(fault);
    }
}

/// Handle of a serving simulator.
pub struct SimServer {
    pub(crate) addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl SimServer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// `vnet-migrate simulate-arm`: serves on 127.0.0.1:`port`, prints
/// `listening on http://127.0.0.1:PORT` as the first stdout line, runs until Ctrl-C.
pub(crate) async fn run_simulate_arm(sim: Simulator, port: u16) -> anyhow::Result<()> {
    let server = sim.serve(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url())?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
