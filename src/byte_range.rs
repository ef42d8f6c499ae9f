//! One `Range: bytes=…` part, as a server honours it: for the fake's media
//! downloads and for the media copies this server serves, so that a player
//! can seek.

/// A `Range: bytes=…` over a body of `len` bytes: the inclusive part it
/// names, or `Err` when it names nothing there. Several ranges, or another
/// unit, are ignored (the whole body), as a server may.
pub fn byte_range(range: &str, len: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let last = len.checked_sub(1);
    let part = match (a.parse::<usize>().ok(), b.parse::<usize>().ok()) {
        (Some(start), Some(end)) if start <= end => (start, end.min(last.unwrap_or(0))),
        (Some(start), None) if b.is_empty() => (start, last.unwrap_or(0)),
        (None, Some(suffix)) if a.is_empty() && suffix > 0 => (len.saturating_sub(suffix), last.unwrap_or(0)),
        _ => return None,
    };
    if last.is_none() || part.0 >= len {
        return Some(Err(()));
    }
    Some(Ok(part))
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges_as_a_server_reads_them() {
        assert_eq!(byte_range("bytes=0-2", 20), Some(Ok((0, 2))));
        assert_eq!(byte_range("bytes=5-", 20), Some(Ok((5, 19))));
        assert_eq!(byte_range("bytes=-4", 20), Some(Ok((16, 19))));
        assert_eq!(byte_range("bytes=-40", 20), Some(Ok((0, 19))));
        assert_eq!(byte_range("bytes=10-999", 20), Some(Ok((10, 19))));
        assert_eq!(byte_range("bytes=20-", 20), Some(Err(())));
        assert_eq!(byte_range("bytes=0-", 0), Some(Err(())));
        assert_eq!(byte_range("bytes=0-1,5-6", 20), None);
        assert_eq!(byte_range("items=0-1", 20), None);
        assert_eq!(byte_range("bytes=3-1", 20), None);
        assert_eq!(byte_range("bytes=-0", 20), None);
    }
}
