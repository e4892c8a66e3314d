//! One test binary: every test talks to a real relay over HTTP on 127.0.0.1,
//! with a real database of its own (a SQLite file, or a fresh PostgreSQL
//! database and RabbitMQ queue prefix for the scaled backend); the console's
//! page test also drives a real headless Chromium.

mod admin;
mod bench;
mod browser;
mod chaos;
mod cli;
mod connections;
mod console;
mod delivery;
mod demo;
mod deploy_kit;
mod disruptive;
mod dryad_flow;
mod faults_dispatch;
mod faults_queue;
mod fixtures;
mod guide;
mod helpers;
mod hostile;
mod lifecycle;
mod logs;
mod misbehaving_merchants;
mod openapi;
mod pg_db;
mod plans;
mod providers;
mod proxies;
mod retention;
mod retry_clock;
mod rotation;
mod scaled;
mod secrets;
mod store_conformance;
mod trust;
mod vectors;
