//! End-to-end tests: the real `bluegreen` binary in front of real upstream
//! servers, driven by real clients (hyper HTTP/1.1 and HTTP/2, curl,
//! tokio-tungstenite). One test binary so the suite links once.

mod acme;
mod admin;
mod browser;
mod cluster;
mod compaction;
mod config;
mod conformance;
mod demo;
mod deploy;
mod drivers;
mod fidelity;
mod haproxy;
mod health;
mod hold;
mod hostile;
mod judge;
mod keepalive;
mod manners;
mod migrate;
mod migrate_live;
mod notify;
mod observe;
mod operator;
mod pg;
mod preview;
mod raw;
mod reload;
mod replay;
mod sessions;
mod shadow;
mod shutdown;
mod state;
mod streaming;
mod support;
mod switching;
mod tls;
mod upgrade;
mod watchdog;
mod weight;
