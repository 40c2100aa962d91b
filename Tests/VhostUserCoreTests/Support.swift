import VhostUserCore
import VhostUserEmbedded
import VhostUserTestSupport

/// The engine's deterministic tests: the embedded driver, no threads, sockets or sleeps; each wait of
/// the test side runs the engine until it has nothing left to do.
typealias Harness = EngineHarness

extension EngineHarness {
    convenience init(queueSize: Int = 256, memorySize: Int = 4 << 20, pollMaximum: UInt64 = 0, polling: AdaptivePolling? = nil) throws {
        try self.init(.embedded, queueSize: queueSize, memorySize: memorySize,
                      polling: polling ?? AdaptivePolling(maximumNanoseconds: pollMaximum))
    }

    /// The embedded driver, which every harness of this target has.
    var driver: EmbeddedVhostUser { embedded! }
}
