import Glibc

/// Runs a closure on its own POSIX thread: the control socket, the signal thread, and the event
/// loop in tests and benchmarks. Dispatch and Swift concurrency are not used, so that each long-lived
/// loop owns a thread of its own.
public final class OSThread: @unchecked Sendable {
    private var thread: pthread_t
    private final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }

    public init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var t = pthread_t()
        let result = pthread_create(&t, nil, { raw in
            let box = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! Box
            box.body()
            return nil
        }, box)
        precondition(result == 0, "pthread_create failed")
        thread = t
    }

    public func join() { pthread_join(thread, nil) }

    /// Lets the thread end on its own, its resources freed when it does (for one that may never end).
    /// Call at most once, and never together with `join`.
    public func detach() { pthread_detach(thread) }
}
