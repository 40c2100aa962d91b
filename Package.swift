// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "vhost-iommu",
    products: [
        .library(name: "VirtioIOMMU", targets: ["VirtioIOMMU"]),
        .library(name: "VhostUser", targets: ["VhostUser"]),
        .library(name: "PASIDAllocators", targets: ["PASIDAllocators"]),
        .library(name: "PASIDStore", targets: ["PASIDStore"]),
        .library(name: "IOMMUFrontend", targets: ["IOMMUFrontend"]),
        .executable(name: "vhost-iommu", targets: ["vhost-iommu"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
    ],
    targets: [
        // Device model: wire format, domains, mappings, translation. No system calls.
        .target(name: "VirtioIOMMU", dependencies: [
            "PASIDAllocators", "LittleEndianBytes",
            .product(name: "DequeModule", package: "swift-collections"),
        ]),
        .testTarget(name: "VirtioIOMMUTests", dependencies: ["VirtioIOMMU", "PASIDAllocators", "SeededRandom", "CHeaderCheck"]),
        // Little-endian field access at byte offsets: the one copy the model, the front-end protocol and the
        // daemon's ACPI table share.
        .target(name: "LittleEndianBytes"),
        // The seeded generator randomized tests and benchmarks share (replayable from the printed seed).
        .target(name: "SeededRandom"),
        // Test support that needs neither the engine nor the daemon: waiting for a condition that gives no
        // signal, temporary PASID store files. The store's own tests use it without the vhost-user stack.
        .target(name: "TestSupport"),
        // Test support: include/'s C headers compiled against the Swift encoders' sizes and offsets.
        .target(name: "CHeaderCheck"),
        // What the device model needs of the host-wide PASID allocator: the protocol and the in-memory
        // store. No C, no system calls, so the model, its tests and FuzzRequests need no SQLite.
        .target(name: "PASIDAllocators"),
        // The durable store that vhost-iommu processes share: SQLite (the system libsqlite3).
        .systemLibrary(name: "CSQLite"),
        .target(name: "PASIDStore", dependencies: [
            "CSQLite", "PASIDAllocators", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "PASIDStoreTests", dependencies: ["PASIDStore", "PASIDAllocators", "TestSupport"]),
        // The vhost-user-iommu front-end protocol (docs/frontend-protocol.md): codecs, the op-log writer and
        // a reference mirror reader. No system calls, no C.
        .target(name: "IOMMUFrontend", dependencies: ["LittleEndianBytes"]),
        // How the model's recorded changes become log operations: the one place that knows both.
        .target(name: "ModelMirroring", dependencies: ["VirtioIOMMU", "IOMMUFrontend"]),
        .testTarget(name: "IOMMUFrontendTests", dependencies: [
            "IOMMUFrontend", "VirtioIOMMU", "PASIDAllocators", "ModelMirroring", "SeededRandom", "CHeaderCheck",
        ]),
        // Thin C helpers for epoll, eventfd, memfd, CMSG, the front-end region's 64-bit atomics and the spin hint.
        .target(name: "CVhostUser"),
        // The device-agnostic vhost-user engine, free of the OS: messages, validation and dispatch, split
        // rings over host-mapped memory, the polling policy. No Glibc, no swift-system, no C shim.
        .target(name: "VhostUserCore", dependencies: [
            .product(name: "Atomics", package: "swift-atomics"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The engine on Linux: epoll loop, system calls, listener, mmap'd guest memory (re-exports the core).
        .target(name: "VhostUser", dependencies: [
            "VhostUserCore", "CVhostUser",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The engine driven fully in memory, step by step (after swift-nio's NIOEmbedded): no threads,
        // sockets or sleeps. Deterministic engine tests and the fuzz targets run on it.
        .target(name: "VhostUserEmbedded", dependencies: [
            "VhostUserCore", .product(name: "Logging", package: "swift-log"),
        ]),
        // The driver's side for tests, benchmarks and fuzz targets: a vhost-user front-end, guest memory, split
        // rings and eventfds, over a real socket, memfds and eventfds or into the embedded driver; an echo
        // device and the harness that puts it behind either engine.
        .target(name: "VhostUserTestSupport", dependencies: [
            "VhostUser", "VhostUserEmbedded", "CVhostUser", "SeededRandom", "TestSupport",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The core's logic, deterministic, on the embedded driver.
        .testTarget(name: "VhostUserCoreTests", dependencies: [
            "VhostUserCore", "VhostUserEmbedded", "VhostUserTestSupport",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "VhostUserTests", dependencies: [
            "VhostUser", "VhostUserCore", "VhostUserTestSupport", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The daemon: CLI, wiring, control socket, signals.
        .executableTarget(name: "vhost-iommu", dependencies: [
            "VirtioIOMMU", "LittleEndianBytes", "VhostUser", "PASIDAllocators", "PASIDStore", "IOMMUFrontend", "ModelMirroring",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The real daemon started as a child process, for the end-to-end and real-guest tests.
        .target(name: "DaemonTestSupport", dependencies: [
            "VhostUser", "VhostUserTestSupport", "TestSupport", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // End-to-end tests: start the real daemon and drive it over real sockets and shared memory.
        .testTarget(name: "VhostIOMMUTests", dependencies: [
            "vhost-iommu", "VirtioIOMMU", "VhostUser", "VhostUserTestSupport", "PASIDAllocators", "PASIDStore", "DaemonTestSupport",
            "SeededRandom", "TestSupport",
            "IOMMUFrontend", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // A real QEMU and a real Linux guest in front of the daemon (scripts/setup-qemu, scripts/setup-guest).
        .testTarget(name: "IntegrationTests", dependencies: [
            "vhost-iommu", "DaemonTestSupport", "VhostUser", "TestSupport", .product(name: "SystemPackage", package: "swift-system"),
        ], path: "Tests/Integration"),
        // Benchmarks: `swift run -c release vhost-iommu-bench` (docs/performance.md).
        .executableTarget(name: "vhost-iommu-bench", dependencies: [
            "VirtioIOMMU", "VhostUser", "VhostUserTestSupport", "PASIDAllocators", "PASIDStore", "SeededRandom", "TestSupport",
        ]),
        // libFuzzer targets (scripts/fuzz builds them with -sanitize=fuzzer -DFUZZING; plain builds
        // make small programs that replay inputs).
        .target(name: "FuzzSupport"),
        .executableTarget(name: "FuzzRequests", dependencies: ["FuzzSupport", "VirtioIOMMU", "PASIDAllocators"]),
        .executableTarget(name: "FuzzMessages", dependencies: [
            "FuzzSupport", "VhostUserCore", "VhostUserEmbedded", "VhostUserTestSupport",
        ]),
        .executableTarget(name: "FuzzChains", dependencies: ["FuzzSupport", "VhostUserCore", "VhostUserEmbedded", "VhostUserTestSupport"]),
        .executableTarget(name: "FuzzFrontend", dependencies: ["FuzzSupport", "IOMMUFrontend"]),
    ],
    swiftLanguageModes: [.v6]
)
