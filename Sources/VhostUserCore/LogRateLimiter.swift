/// Bounds the warnings that guest or front-end input can cause: at most `burst` in each `window`;
/// the rest are counted and reported as one summary, so a hostile guest cannot fill the host's disk.
/// OS-free: the caller passes the time.
public struct LogRateLimiter: Sendable {
    public let burst: Int
    public let window: Duration
    private var windowStart: ContinuousClock.Instant?
    private var admittedInWindow = 0
    /// Warnings dropped in the current window.
    public private(set) var suppressed = 0
    /// Warnings dropped since this limiter was made.
    public private(set) var totalSuppressed = 0

    public init(burst: Int, window: Duration) {
        precondition(burst > 0 && window > .zero)
        self.burst = burst
        self.window = window
    }

    /// Whether to log a warning now; `suppressedBefore` is how many were dropped in the window
    /// that just ended (to be said with this warning), 0 otherwise.
    public mutating func admit(at now: ContinuousClock.Instant) -> (admitted: Bool, suppressedBefore: Int) {
        var carried = 0
        if let start = windowStart, now - start < window {
            // Same window.
        } else {
            carried = suppressed
            suppressed = 0
            admittedInWindow = 0
            windowStart = now
        }
        guard admittedInWindow < burst else {
            suppressed += 1
            totalSuppressed += 1
            return (false, 0)
        }
        admittedInWindow += 1
        return (true, carried)
    }

    /// The count dropped in a window that has ended with nothing admitted after it (for a
    /// summary line when the warnings simply stopped), or nil; the count is reported once.
    public mutating func takeExpiredSuppressions(at now: ContinuousClock.Instant) -> Int? {
        guard suppressed > 0, let start = windowStart, now - start >= window else { return nil }
        defer { suppressed = 0 }
        return suppressed
    }

    /// Whatever was dropped and not yet reported (at disconnect), or nil.
    public mutating func takeSuppressions() -> Int? {
        guard suppressed > 0 else { return nil }
        defer { suppressed = 0 }
        return suppressed
    }
}
