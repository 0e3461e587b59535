// swift-tools-version:5.9
// Declarations of the Apple SDK APIs that this project's Apple-only Swift code calls (Core ML, Vision, Core Image,
// Core Video, Image I/O, Core Graphics, UIKit), transcribed from Apple's documentation, so that Linux can type-check
// that code (ios_harness/typecheck_apple.sh). Nothing here runs: every body traps. It is not the SDK: a call these
// stubs accept may still fail on a Mac (a missed overload, availability, Sendable checking), but a call they refuse
// names an API or a signature that the documentation does not have. See README.md here.
import PackageDescription

let package = Package(
    name: "AppleSDKStubs",
    products: [
        .library(name: "CoreGraphics", targets: ["CoreGraphics"]),
        .library(name: "CoreVideo", targets: ["CoreVideo"]),
        .library(name: "ImageIO", targets: ["ImageIO"]),
        .library(name: "CoreImage", targets: ["CoreImage"]),
        .library(name: "CoreML", targets: ["CoreML"]),
        .library(name: "Vision", targets: ["Vision"]),
        .library(name: "UIKit", targets: ["UIKit"]),
    ],
    targets: [
        .target(name: "CoreGraphics"),
        .target(name: "CoreVideo"),
        .target(name: "ImageIO", dependencies: ["CoreGraphics"]),
        .target(name: "CoreImage", dependencies: ["CoreGraphics", "CoreVideo"]),
        .target(name: "CoreML", dependencies: ["CoreGraphics", "CoreVideo", "ImageIO"]),
        .target(name: "Vision", dependencies: ["CoreGraphics", "CoreVideo", "ImageIO", "CoreImage", "CoreML"]),
        .target(name: "UIKit", dependencies: ["CoreGraphics"]),
    ]
)
