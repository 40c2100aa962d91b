/// Bounded adaptive polling of the rings before the loop blocks, after QEMU's AioContext polling:
/// the window grows (from 4 µs, doubling) while work keeps arriving just after the loop would have
/// blocked, shrinks (halving) when work arrives only long after the maximum, and never exceeds the
/// maximum. A guest that sends requests back to back (Linux spins on every MAP/UNMAP) is then served
/// without the cross-process wake-up; an idle guest costs at most one window per wake-up, then none.
///
/// Past `yieldAfter` without work, the spin calls sched_yield between checks: a thread that wants the
/// core (QEMU's vCPU woken by an interrupt, its main loop and AIO workers doing the guest's disk I/O) then
/// runs at once instead of waiting behind the spin. On 2 cores, polling through a virtio-blk I/O without
/// yielding made the vCPU wait on a run queue behind QEMU's own threads (docs/performance.md, "Real DMA").
public struct AdaptivePolling: Sendable, Hashable {
    /// The longest window in nanoseconds; 0 turns polling off.
    public let maximum: UInt64
    /// How long the spin goes without yielding, in nanoseconds; nil: it never yields.
    public let yieldAfter: UInt64?
    /// The current window in nanoseconds.
    public private(set) var window: UInt64 = 0

    static let initialWindow: UInt64 = 4_000

    public init(maximumNanoseconds: UInt64, yieldAfterNanoseconds: UInt64? = nil) {
        maximum = maximumNanoseconds
        yieldAfter = yieldAfterNanoseconds
    }

    /// Starts with the window already open (tests that need the loop to be spinning at a given moment).
    init(maximumNanoseconds: UInt64, window: UInt64, yieldAfterNanoseconds: UInt64? = nil) {
        maximum = maximumNanoseconds
        yieldAfter = yieldAfterNanoseconds
        self.window = min(window, maximumNanoseconds)
    }

    /// The same settings with the window closed (a fresh device has not polled yet).
    public var restarted: AdaptivePolling { AdaptivePolling(maximumNanoseconds: maximum, yieldAfterNanoseconds: yieldAfter) }

    /// Adjusts the window after a wait that lasted `waited` nanoseconds (poll and block together)
    /// before something happened.
    public mutating func record(waited: UInt64) {
        guard maximum > 0 else { return }
        if waited <= window {
            return  // work arrived inside the window: the sweet spot
        } else if waited > maximum {
            window /= 2
            if window < Self.initialWindow { window = 0 }
        } else if window < maximum {
            window = window == 0 ? Self.initialWindow : min(maximum, window * 2)
        }
    }
}
