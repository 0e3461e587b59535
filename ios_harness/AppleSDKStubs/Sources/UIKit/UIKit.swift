// UIKit, as far as this project uses it. https://developer.apple.com/documentation/uikit/uiimage
import CoreGraphics
import Foundation

/// https://developer.apple.com/documentation/uikit/uiimage
open class UIImage: NSObject {
    /// https://developer.apple.com/documentation/uikit/uiimage/orientation (an Objective-C enum: not frozen, so a
    /// switch over it needs `@unknown default`)
    public enum Orientation: Int {
        case up = 0
        case down = 1
        case left = 2
        case right = 3
        case upMirrored = 4
        case downMirrored = 5
        case leftMirrored = 6
        case rightMirrored = 7
    }

    open var imageOrientation: UIImage.Orientation { fatalError("AppleSDKStubs") }
    open var cgImage: CGImage? { fatalError("AppleSDKStubs") }
}
