//! Text → raw document: detects the format of a config (native YAML or AWS
//! JSON), parses it, and follows `import:` of AWS JSON files. Sits above the
//! two parsers (`config` for native YAML and the raw document types, `aws`
//! for AWS JSON) so that neither imports the other.

use std::path::Path;

use super::{
    aws,
    config::{
        Attachment, Doc, Format, Scalar, detect_format, is_stdin, parse_native, read, source_label,
    },
    diag::Problem,
};

/// Parses text of either format into a raw document (no `import:` handling).
///
/// # Errors
/// The parse problem, with file and line.
pub fn parse_text(text: &str, file: Option<&Path>) -> Result<(Doc, Vec<String>), Vec<Problem>> {
    match detect_format(text) {
        Format::AwsJson => aws::parse(text, file).map(|d| (d, vec![])),
        Format::Native => parse_native(text, file).map(|n| (n.doc, n.imports)),
    }
}

/// Reads a config file of either format, follows `import:` (AWS JSON files,
/// relative to the importing file) and adds `attach` as interfaces.
///
/// # Errors
/// Every problem found while reading (unreadable files, syntax errors, a
/// bad import).
pub fn load_doc(path: &Path, attach: &[Attachment]) -> Result<Doc, Vec<Problem>> {
    let text = read(path)?;
    let (mut doc, imports) = parse_text(&text, Some(source_label(path)))?;
    let mut problems = vec![];
    // Imports of a config read from standard input start at the current directory.
    let base = match path.parent() {
        Some(dir) if !is_stdin(path) => dir,
        _ => Path::new("."),
    };
    for imp in imports {
        let ipath = base.join(&imp);
        match read(&ipath) {
            Err(p) => problems.extend(p),
            Ok(t) if detect_format(&t) != Format::AwsJson => problems.push(
                Problem::error(
                    format!("import `{imp}` is not AWS JSON (no top-level \"SecurityGroups\")"),
                    "import only files printed by `aws ec2 describe-security-groups`; put native groups in this file",
                )
                .in_file(Some(source_label(path))),
            ),
            Ok(t) => match aws::parse(&t, Some(&ipath)) {
                Err(p) => problems.extend(p),
                Ok(d) => merge_import(&mut doc, d),
            },
        }
    }
    doc.interfaces.extend(attach.iter().map(Attachment::to_raw));
    if problems.is_empty() {
        Ok(doc)
    } else {
        Err(problems)
    }
}

/// Adds an imported AWS document's groups and prefix lists. Prefix lists the
/// importing file defines win over the importer's placeholders.
fn merge_import(doc: &mut Doc, imported: Doc) {
    doc.groups.extend(imported.groups);
    for pl in imported.prefix_lists {
        let id = pl.id.as_ref().map(Scalar::text);
        let defined = doc
            .prefix_lists
            .iter()
            .any(|p| p.id.as_ref().map(Scalar::text) == id);
        if !(pl.placeholder && defined) {
            doc.prefix_lists.push(pl);
        }
    }
}
