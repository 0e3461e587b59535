// Core Video, as far as this project uses it: the pixel buffer types, which Core Foundation imports as classes.
// https://developer.apple.com/documentation/corevideo/cvpixelbuffer, .../cvimagebuffer, .../cvbuffer
import Foundation

public final class CVBuffer {
    private init() { fatalError("AppleSDKStubs: CVBuffer is a declaration only") }
}

public typealias CVImageBuffer = CVBuffer
public typealias CVPixelBuffer = CVImageBuffer

/// https://developer.apple.com/documentation/corevideo/cvpixelbuffergetwidth(_:)
public func CVPixelBufferGetWidth(_ pixelBuffer: CVPixelBuffer) -> Int { fatalError("AppleSDKStubs") }
/// https://developer.apple.com/documentation/corevideo/cvpixelbuffergetheight(_:)
public func CVPixelBufferGetHeight(_ pixelBuffer: CVPixelBuffer) -> Int { fatalError("AppleSDKStubs") }
