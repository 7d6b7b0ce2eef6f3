//! Group commit: writes that reach one seaportd together share one etcd
//! transaction. etcd's write rate is bound by its fsync per transaction,
//! not by the operations in it, so while a few transactions are on their
//! way the writes arriving meanwhile wait and go together in the next.
//! A shared transaction holds every write's compares; when one fails (or
//! two writes touch one key), each write goes again in a transaction of
//! its own, which says which precondition failed.

use std::sync::Arc;

use etcd_client::Txn;
use seaport_core::{Result, Write};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{EtcdStore, revision_of};

/// A write and where its answer goes.
pub(crate) type Pending = (Write, oneshot::Sender<Result<u64>>);

/// Transactions on their way at once: enough to keep etcd's pipeline
/// full, few enough that writes queue up and share.
const IN_FLIGHT: usize = 4;

/// etcd's default --max-txn-ops: the most compares, and the most
/// operations, one transaction may hold.
const MAX_TXN_OPS: usize = 128;

/// Sends the writes queued on `queue` to etcd, in shared transactions.
pub(crate) async fn run(store: Arc<EtcdStore>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = vec![first];
        let (mut compares, mut ops) = size(&store, &batch[0].0);
        while let Ok(next) = queue.try_recv() {
            let (c, o) = size(&store, &next.0);
            if compares + c > MAX_TXN_OPS || ops + o > MAX_TXN_OPS {
                carried = Some(next);
                break;
            }
            (compares, ops) = (compares + c, ops + o);
            batch.push(next);
        }
        let store = store.clone();
        tokio::spawn(async move {
            commit(&store, batch).await;
            drop(slot);
        });
    }
}

/// The compares and operations `write` adds to a transaction.
fn size(store: &EtcdStore, write: &Write) -> (usize, usize) {
    let (compares, ops) = store.parts(write);
    (compares.len(), ops.len())
}

/// Commits `batch` in one transaction, or each on its own when that fails.
async fn commit(store: &Arc<EtcdStore>, batch: Vec<Pending>) {
    if batch.len() > 1 {
        let (mut compares, mut ops) = (Vec::new(), Vec::new());
        for (write, _) in &batch {
            let (c, o) = store.parts(write);
            compares.extend(c);
            ops.extend(o);
        }
        if let Ok(answer) = store.txn(Txn::new().when(compares).and_then(ops)).await
            && answer.succeeded()
        {
            let revision = revision_of(answer.header());
            for (_, done) in batch {
                let _ = done.send(Ok(revision));
            }
            return;
        }
    }
    let mut singles = tokio::task::JoinSet::new();
    for (write, done) in batch {
        let store = store.clone();
        singles.spawn(async move {
            let _ = done.send(store.single(&write).await);
        });
    }
    singles.join_all().await;
}
