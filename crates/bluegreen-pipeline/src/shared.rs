//! What every node reads the same way from the shared store: the deploy
//! lock's name, and the deploy book as stored (records written by an older
//! version normalized). Below `cluster` and `watchdog`, which both use it.

use bluegreen_core::deploy::DeployBook;

/// The deploy lock's name in the shared store.
pub(crate) const DEPLOY_LOCK: &str = "deploy";

/// Records written by an older version get today's step list.
pub(crate) fn normalized(mut book: DeployBook) -> DeployBook {
    if book.next_id == 0 {
        book.next_id = 1;
    }
    for d in book.current.iter_mut().chain(book.history.iter_mut()) {
        d.normalize();
    }
    book
}

pub(crate) fn new_book() -> DeployBook {
    normalized(DeployBook::default())
}
