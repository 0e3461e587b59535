// Core Graphics, as far as this project uses it. CGRect, CGSize and CGFloat come from Foundation on Linux as on Apple
// platforms. Declarations from https://developer.apple.com/documentation/coregraphics/cgimage.
import Foundation

@inline(never) func stub(_ name: String = #function) -> Never { fatalError("AppleSDKStubs: \(name) is a declaration only") }

/// https://developer.apple.com/documentation/coregraphics/cgimage (a Core Foundation type, imported as a class).
public final class CGImage {
    private init() { stub() }
    public var width: Int { stub() }
    public var height: Int { stub() }
    public var bitsPerComponent: Int { stub() }
    public var bitsPerPixel: Int { stub() }
    public var bytesPerRow: Int { stub() }
}
