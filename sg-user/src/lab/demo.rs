//! `sgctl demo`: the seed article's web server, proven with real packets.
//!
//! A thin wrapper over the lab ([`crate::lab`]) on the embedded example
//! [`CONFIG`]: `lab up` (hosts `web`, `db`, one inside and one outside the
//! office prefix list, the groups enforced with the code of `sgctl apply`),
//! `lab verify` (every flow compared with the reference evaluator), the
//! `sgctl status` of web's interface, `lab down` — also when something fails.

use std::fmt::Write as _;

use crate::{
    kernel::pins::IfaceId,
    lab::{self, LabError, verify},
};

type Result<T, E = LabError> = std::result::Result<T, E>;

/// The name of the demo's lab (namespaces `sgl-demo-*`).
pub const LAB: &str = "demo";

/// The demo's groups: the embedded example the lab is built from.
pub const CONFIG: &str = r#"# The seed article's web server and its database tier.
security_groups:
  - id: sg-web
    description: web servers
    ingress:
      - { protocol: tcp, ports: 80, cidr: 0.0.0.0/0, description: HTTP from anywhere }
      - { protocol: tcp, ports: 80, cidr: "::/0", description: HTTP from anywhere (IPv6) }
      - { protocol: tcp, ports: 443, cidr: 0.0.0.0/0, description: HTTPS from anywhere }
      - { protocol: tcp, ports: 443, cidr: "::/0", description: HTTPS from anywhere (IPv6) }
      - { protocol: tcp, ports: 22, prefix_list: pl-office, description: SSH from the office }
      - { protocol: tcp, ports: 3389, prefix_list: pl-office, description: RDP from the office }
    egress:
      - { protocol: tcp, ports: 3306, group: sg-db, description: MySQL to the database tier }
  - id: sg-db
    description: database servers
    ingress:
      - { protocol: tcp, ports: 3306, group: sg-web, description: MySQL from the web tier }
prefix_lists:
  - id: pl-office
    cidrs: [198.18.1.0/24, "2001:db8:1::/48"]
interfaces:
  - { name: eth0, netns: web, security_groups: [sg-web], addresses: [198.18.0.10, "2001:db8::10"] }
  - { name: eth0, netns: db, security_groups: [sg-db], addresses: [198.18.2.10, "2001:db8:3::10"] }
"#;

/// Builds the lab, verifies, prints, removes it (also on error). Fails when
/// a flow disagrees with the evaluator (after printing the report).
pub fn run() -> Result<String> {
    let dir = std::env::temp_dir().join(format!("sgctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo.yaml");
    std::fs::write(&path, CONFIG)?;
    let result = run_lab(&path);
    let down = lab::down(LAB);
    let _ = std::fs::remove_dir_all(&dir);
    let (mut out, disagreements) = result?;
    down.map_err(|e| LabError::DemoDown(Box::new(e)))?;
    writeln!(out, "\nlab removed: namespaces, attachments, listeners.")?;
    if disagreements > 0 {
        print!("{out}");
        return Err(LabError::Disagreements(disagreements));
    }
    Ok(out)
}

fn run_lab(config: &std::path::Path) -> Result<(String, usize)> {
    let mut out = String::new();
    let up = lab::up(LAB, config, &[], &[], &lab::UpOptions::default())
        .map_err(|e| LabError::DemoUp(Box::new(e)))?;
    let plan = &up.state.plan;
    writeln!(
        out,
        "The seed article's groups (sg-web: HTTP/HTTPS from anywhere, SSH/RDP from the office;\n\
         sg-db: MySQL from sg-web), enforced in namespaces on one bridge:\n"
    )?;
    out.push_str(&verify::render_plan(plan));
    let report = verify::verify(plan, &up.state.lab_model()?)?;
    writeln!(out)?;
    out.push_str(&verify::render_report(plan, &report));
    let web = plan.host("web").ok_or(LabError::NoWebHost)?;
    let status = crate::agent::status::iface_status(IfaceId::new(&web.iface, Some(&web.netns)))?;
    writeln!(out, "\n`sgctl status` of web's interface:")?;
    out.push_str(&crate::agent::status::render(&status));
    Ok((out, report.disagreements().len()))
}
