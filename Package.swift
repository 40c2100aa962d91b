// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "vhost-iommu",
    products: [
        .library(name: "VirtioIOMMU", targets: ["VirtioIOMMU"]),
    ],
    targets: [
        // Device model: wire format, domains, mappings, translation. No system calls.
        .target(name: "VirtioIOMMU"),
        .testTarget(name: "VirtioIOMMUTests", dependencies: ["VirtioIOMMU"]),
    ],
    swiftLanguageModes: [.v6]
)
