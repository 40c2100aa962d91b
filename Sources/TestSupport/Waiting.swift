import Glibc

/// Checks `condition` until it holds or `timeout` passes; returns whether it holds. For state that gives
/// no signal to wait on (another process's /proc entries, a file, a ring another thread writes): the
/// `interval` between checks only spaces them out.
public func waitUntil(_ timeout: Duration = .seconds(5), every interval: Duration = .milliseconds(1),
                      _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + min(timeout, .seconds(86_400))
    let (seconds, attoseconds) = min(max(interval, .zero), .seconds(1)).components
    let microseconds = useconds_t(seconds * 1_000_000 + attoseconds / 1_000_000_000_000)
    while try !condition() {
        if ContinuousClock.now >= deadline { return false }
        usleep(microseconds)
    }
    return true
}
