// Core Image, as far as this project uses it. https://developer.apple.com/documentation/coreimage
import CoreGraphics
import CoreVideo
import Foundation

/// https://developer.apple.com/documentation/coreimage/ciimage
open class CIImage: NSObject {
    /// https://developer.apple.com/documentation/coreimage/ciimage/init(cvpixelbuffer:)
    public init(cvPixelBuffer pixelBuffer: CVPixelBuffer) { fatalError("AppleSDKStubs") }
    /// https://developer.apple.com/documentation/coreimage/ciimage/init(cgimage:)
    public init(cgImage image: CGImage) { fatalError("AppleSDKStubs") }
    /// https://developer.apple.com/documentation/coreimage/ciimage/extent
    open var extent: CGRect { fatalError("AppleSDKStubs") }
}

/// https://developer.apple.com/documentation/coreimage/cicontext
open class CIContext: NSObject {
    /// https://developer.apple.com/documentation/coreimage/cicontext/init()
    override public init() { fatalError("AppleSDKStubs") }
    /// https://developer.apple.com/documentation/coreimage/cicontext/createcgimage(_:from:)
    open func createCGImage(_ image: CIImage, from fromRect: CGRect) -> CGImage? { fatalError("AppleSDKStubs") }
}
