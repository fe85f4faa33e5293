//! Any bytes as an HTTP/1 request or response reaching the proxy's forwarder (`framing`): no
//! panic; an accepted request has one way to find its end (never both Content-Length and
//! Transfer-Encoding, never two lengths); a chunked body decodes the same at any split, and
//! decodes the same again after the proxy's re-chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_proxy::framing::{self, Body, Chunked, Piece};

fn dechunk(input: &[u8], split: usize) -> Option<(Vec<u8>, Vec<u64>, usize)> {
    let mut c = Chunked::default();
    let (mut data, mut sizes, mut used) = (Vec::new(), Vec::new(), 0);
    let split = split.min(input.len());
    for part in [&input[..split], &input[split..]] {
        let n = c
            .feed(part, |p| match p {
                Piece::Data(r) => data.extend_from_slice(&part[r]),
                Piece::Chunk(n) => sizes.push(n),
                Piece::End { .. } => {}
            })
            .ok()?;
        assert!(n <= part.len());
        used += n;
        if c.done() {
            return Some((data, sizes, used));
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize;
    let mut f = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    if let Ok(Some((req, fr))) = framing::request(data, &mut f) {
        assert!(fr.head_len <= data.len());
        let count = |n: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(n)).count();
        let (cl, te) = (count("content-length"), count("transfer-encoding"));
        assert!(cl <= 1 && te <= 1 && !(cl == 1 && te == 1), "{cl} {te}");
        assert_eq!(fr.body == Body::Chunked, te == 1);
        if fr.body == Body::Chunked {
            let body = &data[fr.head_len..];
            let whole = dechunk(body, body.len());
            assert_eq!(whole, dechunk(body, split), "the same at any split");
            if let Some((bytes, sizes, _)) = whole {
                // the proxy's re-chunking: each chunk's size line, its data, CRLF; then 0
                let mut out = Vec::new();
                let mut at = 0;
                for n in sizes {
                    framing::chunk_line(&mut out, n);
                    out.extend_from_slice(&bytes[at..at + n as usize]);
                    out.extend_from_slice(b"\r\n");
                    at += n as usize;
                }
                out.extend_from_slice(b"0\r\n\r\n");
                let again = dechunk(&out, split).expect("re-chunked bodies decode");
                assert_eq!(again.0, bytes);
                assert_eq!(again.2, out.len());
            }
        }
        for h in req.headers.iter() {
            let _ = framing::is_hop_or_internal(h.name, req.headers);
        }
    }
    let mut f = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    if let Ok(Some((_, rf))) = framing::response(data, &mut f, split % 2 == 1) {
        assert!(rf.head_len <= data.len());
        assert!(!(rf.keep_alive && rf.body == Body::UntilClose));
    }
});
