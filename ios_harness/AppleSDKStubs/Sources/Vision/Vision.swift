// Vision, as far as this project uses it. https://developer.apple.com/documentation/vision
import CoreGraphics
import CoreImage
import CoreML
import CoreVideo
import Foundation
import ImageIO

@inline(never) func stub(_ name: String = #function) -> Never { fatalError("AppleSDKStubs: \(name) is a declaration only") }

/// https://developer.apple.com/documentation/vision/vnconfidence
public typealias VNConfidence = Float

/// https://developer.apple.com/documentation/vision/vnimagecropandscaleoption
public enum VNImageCropAndScaleOption: UInt {
    case centerCrop = 0
    case scaleFit = 1
    case scaleFill = 2
    case scaleFitRotate90CCW = 0x101
    case scaleFillRotate90CCW = 0x102
}

/// https://developer.apple.com/documentation/vision/vnimageoption
public struct VNImageOption: Hashable, Equatable, RawRepresentable {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
}

/// https://developer.apple.com/documentation/vision/vnobservation
open class VNObservation: NSObject {
    open var uuid: UUID { stub() }
    open var confidence: VNConfidence { stub() }
}

/// https://developer.apple.com/documentation/vision/vnclassificationobservation
open class VNClassificationObservation: VNObservation {
    open var identifier: String { stub() }
}

/// https://developer.apple.com/documentation/vision/vncoremlfeaturevalueobservation
open class VNCoreMLFeatureValueObservation: VNObservation {
    open var featureValue: MLFeatureValue { stub() }
    open var featureName: String { stub() }
}

/// https://developer.apple.com/documentation/vision/vnrequestcompletionhandler
public typealias VNRequestCompletionHandler = (VNRequest, Error?) -> Void

/// https://developer.apple.com/documentation/vision/vnrequest
open class VNRequest: NSObject {
    /// https://developer.apple.com/documentation/vision/vnrequest/results
    open var results: [VNObservation]? { stub() }
    open var usesCPUOnly: Bool {
        get { stub() }
        set { stub() }
    }
}

/// https://developer.apple.com/documentation/vision/vnimagebasedrequest
open class VNImageBasedRequest: VNRequest {
    open var regionOfInterest: CGRect {
        get { stub() }
        set { stub() }
    }
}

/// https://developer.apple.com/documentation/vision/vncoremlmodel
open class VNCoreMLModel: NSObject {
    /// https://developer.apple.com/documentation/vision/vncoremlmodel/init(for:)
    public convenience init(for model: MLModel) throws { stub() }
    open var inputImageFeatureName: String {
        get { stub() }
        set { stub() }
    }
}

/// https://developer.apple.com/documentation/vision/vncoremlrequest
open class VNCoreMLRequest: VNImageBasedRequest {
    /// https://developer.apple.com/documentation/vision/vncoremlrequest/init(model:)
    public convenience init(model: VNCoreMLModel) { stub() }
    /// https://developer.apple.com/documentation/vision/vncoremlrequest/init(model:completionhandler:)
    public init(model: VNCoreMLModel, completionHandler: VNRequestCompletionHandler? = nil) { stub() }
    open var model: VNCoreMLModel { stub() }
    /// https://developer.apple.com/documentation/vision/vncoremlrequest/imagecropandscaleoption
    open var imageCropAndScaleOption: VNImageCropAndScaleOption {
        get { stub() }
        set { stub() }
    }
}

/// https://developer.apple.com/documentation/vision/vnimagerequesthandler
open class VNImageRequestHandler: NSObject {
    /// https://developer.apple.com/documentation/vision/vnimagerequesthandler/init(cgimage:options:)-4qda6
    public init(cgImage image: CGImage, options: [VNImageOption: Any] = [:]) { stub() }
    /// https://developer.apple.com/documentation/vision/vnimagerequesthandler (init(cgImage:orientation:options:))
    public init(cgImage image: CGImage, orientation: CGImagePropertyOrientation, options: [VNImageOption: Any] = [:]) {
        stub()
    }
    /// https://developer.apple.com/documentation/vision/vnimagerequesthandler/init(cvpixelbuffer:options:)
    public init(cvPixelBuffer pixelBuffer: CVPixelBuffer, options: [VNImageOption: Any] = [:]) { stub() }
    /// https://developer.apple.com/documentation/vision/vnimagerequesthandler/init(cvpixelbuffer:orientation:options:)-9fxug
    public init(cvPixelBuffer pixelBuffer: CVPixelBuffer, orientation: CGImagePropertyOrientation,
                options: [VNImageOption: Any] = [:]) { stub() }
    /// https://developer.apple.com/documentation/vision/vnimagerequesthandler (init(ciImage:orientation:options:))
    public init(ciImage image: CIImage, orientation: CGImagePropertyOrientation, options: [VNImageOption: Any] = [:]) {
        stub()
    }
    /// https://developer.apple.com/documentation/vision/vnimagerequesthandler/perform(_:)
    open func perform(_ requests: [VNRequest]) throws { stub() }
}
