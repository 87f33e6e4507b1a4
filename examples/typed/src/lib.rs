//! A small bank ledger driven by typed commands: `Input` is the [`Command`] enum and `Output`
//! the [`Reply`] enum. The types are public so that a host can use this crate as a library
//! (`crate-type` includes `rlib`) and exchange real typed values with the guest.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use wasmbox::prelude::*;

/// What the host asks the ledger to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Open an account with an opening balance (in cents).
    Open { account: String, cents: u64 },
    /// Move money between two accounts.
    Transfer {
        from: String,
        to: String,
        cents: u64,
    },
    /// Ask for an account's balance.
    Balance { account: String },
    /// Ask for every account, in name order.
    Statement,
}

/// What the ledger answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The command was applied; `sequence` counts applied commands.
    Done { sequence: u64 },
    /// An account's balance.
    Balance(Account),
    /// All accounts.
    Statement(Vec<Account>),
    /// The command was refused, and why.
    Refused(Refusal),
}

/// One account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// The account's name.
    pub name: String,
    /// Its balance in cents.
    pub cents: u64,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// No account by that name.
    NoSuchAccount(String),
    /// An account by that name exists already.
    AlreadyOpen(String),
    /// The source account holds less than the amount.
    InsufficientFunds { account: String, cents: u64 },
}

#[wasmbox]
async fn run(ctx: WasmBoxContext<Command, Reply>) {
    let mut accounts: BTreeMap<String, u64> = BTreeMap::new();
    let mut sequence = 0;
    loop {
        let reply = match ctx.next().await {
            Command::Open { account, cents } => match accounts.entry(account) {
                Entry::Occupied(taken) => Reply::Refused(Refusal::AlreadyOpen(taken.key().clone())),
                Entry::Vacant(free) => {
                    free.insert(cents);
                    sequence += 1;
                    Reply::Done { sequence }
                }
            },
            Command::Transfer { from, to, cents } => match (accounts.get(&from), accounts.get(&to))
            {
                (None, _) => Reply::Refused(Refusal::NoSuchAccount(from)),
                (_, None) => Reply::Refused(Refusal::NoSuchAccount(to)),
                (Some(&have), Some(_)) if have < cents => {
                    Reply::Refused(Refusal::InsufficientFunds {
                        account: from,
                        cents: have,
                    })
                }
                (Some(_), Some(_)) => {
                    *accounts.entry(from).or_default() -= cents;
                    *accounts.entry(to).or_default() += cents;
                    sequence += 1;
                    Reply::Done { sequence }
                }
            },
            Command::Balance { account } => match accounts.get(&account) {
                Some(&cents) => Reply::Balance(Account {
                    name: account,
                    cents,
                }),
                None => Reply::Refused(Refusal::NoSuchAccount(account)),
            },
            Command::Statement => Reply::Statement(
                accounts
                    .iter()
                    .map(|(name, &cents)| Account {
                        name: name.clone(),
                        cents,
                    })
                    .collect(),
            ),
        };
        ctx.send(reply);
    }
}
