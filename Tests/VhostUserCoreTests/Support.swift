import VhostUserCore
import VhostUserEmbedded
import VhostUserTestSupport

/// The engine's deterministic tests: the embedded driver, no threads, sockets or sleeps; each wait of
/// the test side runs the engine until it has nothing left to do.
typealias Harness = EngineHarness

extension EngineHarness {
    /// The embedded driver, which every harness of this target has.
    var driver: EmbeddedVhostUser { embedded! }
}
