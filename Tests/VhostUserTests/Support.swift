import Glibc
import Logging
import Synchronization
import SystemPackage
import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport


/// The engine's Posix tests: the back-end on its own thread behind a real socket, memfds and eventfds.
typealias Harness = EngineHarness

extension EngineHarness {
    /// The Posix back-end, which every harness of this target has.
    var posix: VhostUserBackend { backend! }
}


/// How many descriptors of this process refer to the memfd named `name` (parallel-safe leak check).
func descriptorsReferring(to name: String) -> Int { ProcessDescriptors.targets().filter { $0.contains(name) }.count }

/// A memfd with a unique name, to follow where its descriptors go.
func namedMemfd(_ name: String) throws -> OwnedFileDescriptor {
    OwnedFileDescriptor(try SystemCall.memfd(name: name, size: 4096))
}
