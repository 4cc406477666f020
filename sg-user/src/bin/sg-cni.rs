//! `sg-cni`: the CNI plugin that puts a container's security groups in
//! force before it starts, chained after the plugin that creates its veth.
//! Everything it does is in `sg_user::agent::cni`; the daemon (`sgctl run
//! --socket`) does the enforcing.

use std::io::Read as _;

fn main() {
    let env = sg_user::agent::cni::Env::read(|k| std::env::var(k).ok());
    let mut config = Vec::new();
    // VERSION may come without a config; everything else has one on stdin.
    if env.command != "VERSION"
        && let Err(e) = std::io::stdin().read_to_end(&mut config)
    {
        eprintln!("sg-cni: reading the network config from stdin: {e}");
    }
    let out = sg_user::agent::cni::run(&env, &config);
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    std::process::exit(out.status);
}
