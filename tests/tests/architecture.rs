//! The module import graph of every library and binary in the workspace has no cycles, and
//! every member takes its dependencies and lints from the workspace.
//!
//! A cycle (module A uses `crate::B` while B uses `crate::A`, or a longer loop) means two
//! modules that cannot be understood, tested or moved apart: the usual fix is to move what
//! both need into a module of its own, or where the thing it belongs to lives.
//!
//! The graph is read from the sources, without compiling them: each target's module tree is
//! followed from its root file through `mod name;` declarations (inline `mod name { … }`
//! blocks count as part of their file), and every path that starts with `crate::`, `super::`
//! or `self::` (in `use` trees, groups included, and in expressions and types) is resolved
//! to the deepest module it names. Edges between a module and its own ancestors are left
//! out: a parent declares its children and re-exports their items (`crate::Error`), so it
//! and its children are one unit; a cycle is between modules that are not nested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[test]
fn no_module_cycles_in_any_workspace_target() {
    let root = openwork_tests::workspace_root();
    let targets = workspace_targets(&root);
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for (name, root_file) in &targets {
        let graph = ModuleGraph::read(&root, root_file);
        let cycles = graph.cycles();
        checked.push(format!("{name}: {} modules", graph.files.len()));
        if name == "openwork-runtime (lib)" {
            // A canary: a parser that saw nothing would find no cycle either.
            assert!(graph.files.len() >= 40, "{name}: {:?}", graph.files.keys());
            assert!(
                graph
                    .edges
                    .contains_key(&("serve".into(), "install".into())),
                "the runtime's serve uses install; the parser missed it"
            );
        }
        for cycle in cycles {
            failures.push(format!("{name}: {}", graph.describe(&cycle)));
        }
    }
    assert!(targets.len() >= 8, "found too few targets: {targets:?}");
    assert!(
        failures.is_empty(),
        "module cycles (move what both modules need into a module of its own):\n\n{}\n\nchecked: {}",
        failures.join("\n\n"),
        checked.join(", ")
    );
}

/// Every member's dependencies come from `[workspace.dependencies]` (one version of each,
/// written once) and every member takes the workspace's lints.
#[test]
fn every_member_takes_its_dependencies_and_lints_from_the_workspace() {
    let root = openwork_tests::workspace_root();
    let workspace: toml::Table = read_toml(&root.join("Cargo.toml"));
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    let shared = workspace["workspace"]["dependencies"]
        .as_table()
        .expect("workspace.dependencies");
    let mut problems = Vec::new();
    for member in members {
        let member = member.as_str().expect("member path");
        let manifest: toml::Table = read_toml(&root.join(member).join("Cargo.toml"));
        if manifest.get("lints").and_then(|l| l.get("workspace"))
            != Some(&toml::Value::Boolean(true))
        {
            problems.push(format!("{member}: no `[lints] workspace = true`"));
        }
        let mut tables = Vec::new();
        for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
            tables.extend(manifest.get(kind).and_then(|t| t.as_table()));
            for target in manifest
                .get("target")
                .and_then(|t| t.as_table())
                .into_iter()
                .flatten()
            {
                tables.extend(target.1.get(kind).and_then(|t| t.as_table()));
            }
        }
        for (name, spec) in tables.into_iter().flatten() {
            let inherited = spec.get("workspace") == Some(&toml::Value::Boolean(true));
            if !inherited {
                problems.push(format!("{member}: {name} is not `workspace = true`"));
            } else if !shared.contains_key(name) {
                problems.push(format!(
                    "{member}: {name} is missing from [workspace.dependencies]"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn read_toml(path: &std::path::Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every library and binary target of the workspace's members, with its root file.
fn workspace_targets(root: &Path) -> Vec<(String, PathBuf)> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    // `members = [ … ]`, on one line or several.
    let members: Vec<&str> = manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.split('"').skip(1).step_by(2).collect())
        .expect("workspace members");
    let mut targets = Vec::new();
    for member in members {
        let dir = root.join(member);
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let mut section = String::new();
        let mut package = String::new();
        let mut lib_path = None;
        let mut bins: Vec<(Option<String>, Option<String>)> = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
                if section == "[[bin]]" {
                    bins.push((None, None));
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_string();
            match (section.as_str(), key.trim()) {
                ("[package]", "name") => package = value,
                ("[lib]", "path") => lib_path = Some(value),
                ("[[bin]]", "path") => bins.last_mut().unwrap().1 = Some(value),
                ("[[bin]]", "name") => bins.last_mut().unwrap().0 = Some(value),
                _ => {}
            }
        }
        let lib = dir.join(lib_path.as_deref().unwrap_or("src/lib.rs"));
        if lib.exists() {
            targets.push((format!("{package} (lib)"), lib));
        }
        if bins.is_empty() && dir.join("src/main.rs").exists() {
            bins.push((Some(package.clone()), Some("src/main.rs".into())));
        }
        for (name, path) in bins {
            let name = name.unwrap_or_else(|| package.clone());
            let path = dir.join(path.unwrap_or_else(|| "src/main.rs".into()));
            targets.push((format!("{package} (bin {name})"), path));
        }
    }
    targets
}

/// A reference from one module to another: where it is, and the path as written.
#[derive(Debug, Clone)]
struct Evidence {
    file: PathBuf,
    line: usize,
    path: String,
}

/// One target's modules (by path, `""` for the root) and the edges between them.
#[derive(Default)]
struct ModuleGraph {
    /// File modules and their files.
    files: BTreeMap<String, PathBuf>,
    /// Inline modules, mapped to the file module they are part of.
    inline: BTreeMap<String, String>,
    /// `from → to`, with the first reference found.
    edges: BTreeMap<(String, String), Evidence>,
}

impl ModuleGraph {
    fn read(workspace: &Path, root_file: &Path) -> ModuleGraph {
        let mut graph = ModuleGraph::default();
        let mut references = Vec::new();
        let mut pending = vec![(String::new(), root_file.to_path_buf(), true)];
        while let Some((module, file, owns_dir)) = pending.pop() {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let tokens = tokenize(&text);
            // Children of lib.rs, main.rs and mod.rs live beside them; those of foo.rs in foo/.
            let dir = if owns_dir {
                file.parent().unwrap().to_path_buf()
            } else {
                file.with_extension("")
            };
            let scan = scan_file(&tokens);
            for (inline_path, name) in scan.children {
                let mut child_dir = dir.clone();
                for part in &inline_path {
                    child_dir.push(part);
                }
                let child = join(&join_all(&module, &inline_path), &name);
                let flat = child_dir.join(format!("{name}.rs"));
                let nested = child_dir.join(&name).join("mod.rs");
                let (path, owns) = if flat.exists() {
                    (flat, false)
                } else if nested.exists() {
                    (nested, true)
                } else {
                    panic!("mod {name} of {}: no file", file.display())
                };
                pending.push((child, path, owns));
            }
            for inline_path in scan.inline_modules {
                graph
                    .inline
                    .insert(join_all(&module, &inline_path), module.clone());
            }
            for (inline_path, line, path) in scan.paths {
                references.push((
                    module.clone(),
                    join_all(&module, &inline_path),
                    file.clone(),
                    line,
                    path,
                ));
            }
            graph.files.insert(module, file);
        }
        for (from, scope, file, line, path) in references {
            let Some(target) = graph.resolve(&scope, &path) else {
                continue;
            };
            let related = from == target
                || target.is_empty()
                || from.is_empty()
                || from.starts_with(&format!("{target}::"))
                || target.starts_with(&format!("{from}::"));
            if !related {
                graph.edges.entry((from, target)).or_insert(Evidence {
                    file: file.strip_prefix(workspace).unwrap_or(&file).to_path_buf(),
                    line,
                    path: path.join("::"),
                });
            }
        }
        graph
    }

    /// The file module a path names (its deepest module), from inside module `scope`.
    fn resolve(&self, scope: &str, path: &[String]) -> Option<String> {
        let mut absolute: Vec<&str> = Vec::new();
        let mut segments = path.iter().map(String::as_str).peekable();
        match segments.next()? {
            "crate" => {}
            "self" => absolute.extend(scope.split("::").filter(|s| !s.is_empty())),
            "super" => {
                absolute.extend(scope.split("::").filter(|s| !s.is_empty()));
                absolute.pop()?;
            }
            _ => return None,
        }
        for segment in segments {
            match segment {
                "super" => {
                    absolute.pop()?;
                }
                "self" => {}
                other => absolute.push(other),
            }
        }
        (0..=absolute.len()).rev().find_map(|n| {
            let candidate = absolute[..n].join("::");
            if self.files.contains_key(&candidate) {
                Some(candidate)
            } else {
                self.inline.get(&candidate).cloned()
            }
        })
    }

    /// Strongly connected groups of more than one module (Tarjan's algorithm).
    fn cycles(&self) -> Vec<Vec<String>> {
        let nodes: Vec<&String> = self.files.keys().collect();
        let index_of: BTreeMap<&String, usize> =
            nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (from, to) in self.edges.keys() {
            if let (Some(&a), Some(&b)) = (index_of.get(from), index_of.get(to)) {
                next[a].push(b);
            }
        }
        struct Tarjan<'a> {
            next: &'a [Vec<usize>],
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            on_stack: Vec<bool>,
            stack: Vec<usize>,
            counter: usize,
            groups: Vec<Vec<usize>>,
        }
        impl Tarjan<'_> {
            fn visit(&mut self, v: usize) {
                self.index[v] = Some(self.counter);
                self.low[v] = self.counter;
                self.counter += 1;
                self.stack.push(v);
                self.on_stack[v] = true;
                for &w in &self.next[v] {
                    match self.index[w] {
                        None => {
                            self.visit(w);
                            self.low[v] = self.low[v].min(self.low[w]);
                        }
                        Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                        Some(_) => {}
                    }
                }
                if Some(self.low[v]) == self.index[v] {
                    let mut group = Vec::new();
                    loop {
                        let w = self.stack.pop().unwrap();
                        self.on_stack[w] = false;
                        group.push(w);
                        if w == v {
                            break;
                        }
                    }
                    self.groups.push(group);
                }
            }
        }
        let mut tarjan = Tarjan {
            next: &next,
            index: vec![None; nodes.len()],
            low: vec![0; nodes.len()],
            on_stack: vec![false; nodes.len()],
            stack: Vec::new(),
            counter: 0,
            groups: Vec::new(),
        };
        for v in 0..nodes.len() {
            if tarjan.index[v].is_none() {
                tarjan.visit(v);
            }
        }
        let mut groups: Vec<Vec<String>> = tarjan
            .groups
            .into_iter()
            .filter(|group| group.len() > 1)
            .map(|group| {
                let mut names: Vec<String> = group.iter().map(|&i| nodes[i].clone()).collect();
                names.sort();
                names
            })
            .collect();
        groups.sort();
        groups
    }

    /// One loop through a strongly connected group, each step with the reference that makes
    /// it, then every other edge inside the group.
    fn describe(&self, group: &[String]) -> String {
        let inside =
            |from: &str, to: &str| group.iter().any(|g| g == from) && group.iter().any(|g| g == to);
        let step = |from: &str, to: &str| {
            let evidence = &self.edges[&(from.to_string(), to.to_string())];
            format!(
                "  {from} -> {to}   ({}:{}: {})",
                evidence.file.display(),
                evidence.line,
                evidence.path
            )
        };
        // Breadth-first from the first module back to itself.
        let start = &group[0];
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.as_str()]);
        let mut closing = None;
        while let Some(at) = queue.pop_front() {
            for (from, to) in self.edges.keys() {
                if from != at || !inside(from, to) {
                    continue;
                }
                if to == start {
                    closing = Some(at);
                    break;
                }
                if !came_from.contains_key(to.as_str()) {
                    came_from.insert(to, at);
                    queue.push_back(to);
                }
            }
            if closing.is_some() {
                break;
            }
        }
        let mut path = vec![start.as_str()];
        let mut at = closing.expect("a strongly connected group has a loop");
        while at != start {
            path.push(at);
            at = came_from[at];
        }
        path.push(start);
        path.reverse();
        let mut lines = vec![format!("cycle among {}:", group.join(", "))];
        lines.extend(path.windows(2).map(|pair| step(pair[0], pair[1])));
        lines.push("  all edges inside the group:".into());
        for (from, to) in self.edges.keys() {
            if inside(from, to) {
                lines.push(step(from, to));
            }
        }
        lines.join("\n")
    }
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}::{child}")
    }
}

fn join_all(parent: &str, children: &[String]) -> String {
    children
        .iter()
        .fold(parent.to_string(), |acc, c| join(&acc, c))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Dollar,
    Other,
}

/// Rust source as the few tokens paths are made of, with the line of each; comments,
/// string and character literals and lifetimes dropped.
fn tokenize(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if at(i + 1) == '/' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                let mut depth = 0;
                loop {
                    if at(i) == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if at(i) == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else if i >= chars.len() {
                        break;
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if at(i) == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '\'' => {
                // A character literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
                if at(i + 1) == '\\' {
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // Raw and byte strings: r"…", r#"…"#, b"…", br#"…"#, c"…".
                if matches!(word.as_str(), "r" | "br" | "b" | "c" | "cr")
                    && (at(i) == '"' || (at(i) == '#' && word.contains('r')))
                {
                    let mut hashes = 0;
                    while at(i) == '#' {
                        hashes += 1;
                        i += 1;
                    }
                    if at(i) != '"' {
                        // r#ident: a raw identifier.
                        continue;
                    }
                    i += 1;
                    let raw = word.contains('r');
                    loop {
                        if i >= chars.len() {
                            break;
                        }
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        if !raw && chars[i] == '\\' {
                            i += 2;
                            continue;
                        }
                        if chars[i] == '"' && (0..hashes).all(|k| at(i + 1 + k) == '#') {
                            i += 1 + hashes;
                            break;
                        }
                        i += 1;
                    }
                    continue;
                }
                tokens.push((Token::Ident(word), line));
            }
            ':' if at(i + 1) == ':' => {
                tokens.push((Token::PathSep, line));
                i += 2;
            }
            '{' => {
                tokens.push((Token::Open, line));
                i += 1;
            }
            '}' => {
                tokens.push((Token::Close, line));
                i += 1;
            }
            ',' => {
                tokens.push((Token::Comma, line));
                i += 1;
            }
            ';' => {
                tokens.push((Token::Semi, line));
                i += 1;
            }
            '*' => {
                tokens.push((Token::Star, line));
                i += 1;
            }
            '$' => {
                tokens.push((Token::Dollar, line));
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                tokens.push((Token::Other, line));
                i += 1;
            }
        }
    }
    tokens
}

/// What one file declares and refers to; module paths are relative to the file's module
/// (the inline modules around the place).
#[derive(Default)]
struct FileScan {
    /// `mod name;`: (inline modules around it, name).
    children: Vec<(Vec<String>, String)>,
    /// `mod name { … }`: its path inside the file.
    inline_modules: Vec<Vec<String>>,
    /// Paths starting with crate/super/self: (inline modules around it, line, segments).
    paths: Vec<(Vec<String>, usize, Vec<String>)>,
}

fn scan_file(tokens: &[(Token, usize)]) -> FileScan {
    let mut scan = FileScan::default();
    // Inline modules open around the current token, with the depth their block opened at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let ident = |i: usize| match tokens.get(i) {
        Some((Token::Ident(word), _)) => Some(word.as_str()),
        _ => None,
    };
    while i < tokens.len() {
        let names = || inline.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        match &tokens[i].0 {
            Token::Open => depth += 1,
            Token::Close => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let Some(name) = ident(i + 1) {
                    match tokens.get(i + 2).map(|t| &t.0) {
                        Some(Token::Semi) => scan.children.push((names(), name.to_string())),
                        Some(Token::Open) => {
                            let mut path = names();
                            path.push(name.to_string());
                            scan.inline_modules.push(path);
                            inline.push((name.to_string(), depth));
                        }
                        _ => {}
                    }
                }
            }
            Token::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && tokens.get(i + 1).map(|t| &t.0) == Some(&Token::PathSep)
                    && (i == 0 || tokens[i - 1].0 != Token::Dollar)
                    && (i == 0 || tokens[i - 1].0 != Token::PathSep) =>
            {
                let line = tokens[i].1;
                let mut found = Vec::new();
                let end = read_tree(tokens, i, vec![], &mut found);
                for path in found {
                    scan.paths.push((names(), line, path));
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// Reads the path (or `use` tree) starting at `tokens[i]`, adding each full path to `out`
/// (prefixed with `prefix`); returns the index after it.
fn read_tree(
    tokens: &[(Token, usize)],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix;
    loop {
        match tokens.get(i).map(|t| &t.0) {
            Some(Token::Ident(word)) => {
                path.push(word.clone());
                i += 1;
            }
            Some(Token::Star) => {
                i += 1;
                break;
            }
            Some(Token::Open) => {
                // A group: each item is a tree of its own under `path`.
                i += 1;
                loop {
                    match tokens.get(i).map(|t| &t.0) {
                        Some(Token::Close) => {
                            i += 1;
                            break;
                        }
                        Some(Token::Comma) => i += 1,
                        None => break,
                        _ => i = read_tree(tokens, i, path.clone(), out),
                    }
                }
                return i;
            }
            _ => break,
        }
        if tokens.get(i).map(|t| &t.0) == Some(&Token::PathSep) {
            i += 1;
        } else {
            break;
        }
    }
    // `self` at the end of a group item (`use super::{self, x}`) names the group's module.
    if path.last().is_some_and(|s| s == "self") && path.len() > 1 {
        path.pop();
    }
    out.push(path);
    i
}
