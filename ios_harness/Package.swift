// swift-tools-version:5.9
// Swift side of the keras-apple-exporter: golden parity (Foundation only, builds and tests on Linux) and a Core ML
// harness (Apple platforms) that runs an exported model on golden images through Vision and through MLModel.
// No external dependencies. Open this folder in Xcode (File > Open...) or run `swift test`.
import PackageDescription

let package = Package(
    name: "ExporterHarness",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [
        .library(name: "GoldenParity", targets: ["GoldenParity"]),
        .library(name: "CoreMLHarness", targets: ["CoreMLHarness"]),
    ],
    targets: [
        .target(name: "GoldenParity"),
        .target(name: "CoreMLHarness", dependencies: ["GoldenParity"]),
        .testTarget(name: "GoldenParityTests", dependencies: ["GoldenParity"]),
        .testTarget(name: "CoreMLHarnessTests", dependencies: ["CoreMLHarness", "GoldenParity"]),
    ]
)
