// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "vhost-iommu",
    products: [
        .library(name: "VirtioIOMMU", targets: ["VirtioIOMMU"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    ],
    targets: [
        // Device model: wire format, domains, mappings, translation. No system calls.
        .target(name: "VirtioIOMMU", dependencies: [
            .product(name: "DequeModule", package: "swift-collections"),
        ]),
        .testTarget(name: "VirtioIOMMUTests", dependencies: ["VirtioIOMMU"]),
    ],
    swiftLanguageModes: [.v6]
)
