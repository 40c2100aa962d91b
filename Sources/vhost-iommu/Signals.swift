import Glibc
import VhostUser

/// SIGINT/SIGTERM stop the daemon cleanly; SIGUSR1 logs the counters. The signals are blocked in
/// every thread and taken synchronously by one thread with `sigwait`, so no handler runs in a
/// signal context.
enum Signals {
    static let stopSignals: [Int32] = [SIGINT, SIGTERM]
    static let reportSignal = SIGUSR1
    /// Used to end the signal thread when the daemon exits on its own.
    static let quitSignal = SIGUSR2

    private static func set() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in stopSignals + [reportSignal, quitSignal] { sigaddset(&set, signal) }
        return set
    }

    /// Call before any thread is created: threads inherit the mask.
    static func blockInThisProcess() {
        var mask = set()
        pthread_sigmask(SIG_BLOCK, &mask, nil)
    }

    /// Starts the signal thread; returns a function that ends it.
    static func handle(stop: @escaping @Sendable () -> Void, report: @escaping @Sendable () -> Void) -> () -> Void {
        let thread = SignalThread(stop: stop, report: report)
        return { thread.finish() }
    }
}

private final class SignalThread: @unchecked Sendable {
    private var thread: OSThread?
    private let stop: @Sendable () -> Void
    private let report: @Sendable () -> Void

    init(stop: @escaping @Sendable () -> Void, report: @escaping @Sendable () -> Void) {
        self.stop = stop
        self.report = report
        thread = OSThread { [self] in loop() }
    }

    private func loop() {
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in Signals.stopSignals + [Signals.reportSignal, Signals.quitSignal] { sigaddset(&mask, signal) }
        while true {
            var signal: Int32 = 0
            guard sigwait(&mask, &signal) == 0 else { continue }
            if signal == Signals.quitSignal { return }
            if signal == Signals.reportSignal { report() } else { stop() }
        }
    }

    func finish() {
        // Every thread blocks the signal, so the one in sigwait takes it.
        kill(getpid(), Signals.quitSignal)
        thread?.join()
    }
}
