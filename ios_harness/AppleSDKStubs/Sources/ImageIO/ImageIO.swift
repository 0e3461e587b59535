// Image I/O, as far as this project uses it. https://developer.apple.com/documentation/imageio
// CFURL, CFString and CFDictionary are Core Foundation types that Foundation re-exports on Apple platforms and Linux's
// Foundation lacks; the type-check target declares them (typecheck_apple.sh, AppleFoundationExtras.swift) as their
// toll-free bridged NS classes, which is how `url as CFURL` and `[CFString: Any]` behave there.
import CoreGraphics
import Foundation

/// https://developer.apple.com/documentation/imageio/cgimagepropertyorientation (raw values are the EXIF ones).
@frozen public enum CGImagePropertyOrientation: UInt32 {
    case up = 1
    case upMirrored = 2
    case down = 3
    case downMirrored = 4
    case leftMirrored = 5
    case right = 6
    case rightMirrored = 7
    case left = 8
}

/// https://developer.apple.com/documentation/imageio/cgimagesource
public final class CGImageSource {
    private init() { fatalError("AppleSDKStubs: CGImageSource is a declaration only") }
}

/// https://developer.apple.com/documentation/imageio/cgimagesourcecreatewithurl(_:_:)
public func CGImageSourceCreateWithURL(_ url: NSURL, _ options: NSDictionary?) -> CGImageSource? {
    fatalError("AppleSDKStubs")
}

/// https://developer.apple.com/documentation/imageio/cgimagesourcecreatewithdata(_:_:)
public func CGImageSourceCreateWithData(_ data: NSData, _ options: NSDictionary?) -> CGImageSource? {
    fatalError("AppleSDKStubs")
}

/// https://developer.apple.com/documentation/imageio/cgimagesourcecreateimageatindex(_:_:_:)
public func CGImageSourceCreateImageAtIndex(_ isrc: CGImageSource, _ index: Int, _ options: NSDictionary?) -> CGImage? {
    fatalError("AppleSDKStubs")
}

/// https://developer.apple.com/documentation/imageio/cgimagesourcecopypropertiesatindex(_:_:_:)
public func CGImageSourceCopyPropertiesAtIndex(_ isrc: CGImageSource, _ index: Int, _ options: NSDictionary?)
    -> NSDictionary? {
    fatalError("AppleSDKStubs")
}

/// https://developer.apple.com/documentation/imageio/cgimagesourcegetcount(_:)
public func CGImageSourceGetCount(_ isrc: CGImageSource) -> Int { fatalError("AppleSDKStubs") }

/// https://developer.apple.com/documentation/imageio/kcgimagepropertyorientation (a CFString)
public let kCGImagePropertyOrientation: NSString = "Orientation"
