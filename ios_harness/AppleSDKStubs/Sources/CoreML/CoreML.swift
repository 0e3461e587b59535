// Core ML, as far as this project uses it. https://developer.apple.com/documentation/coreml
// Signatures as the documentation gives them for Swift; bodies trap (declarations only).
import CoreGraphics
import CoreVideo
import Foundation
import ImageIO

@inline(never) func stub(_ name: String = #function) -> Never { fatalError("AppleSDKStubs: \(name) is a declaration only") }

/// https://developer.apple.com/documentation/coreml/mlfeaturetype
public enum MLFeatureType: Int {
    case invalid = 0
    case int64 = 1
    case double = 2
    case string = 3
    case image = 4
    case multiArray = 5
    case dictionary = 6
    case sequence = 7
    case state = 8
}

/// https://developer.apple.com/documentation/coreml/mlimageconstraint
open class MLImageConstraint: NSObject {
    open var pixelsHigh: Int { stub() }
    open var pixelsWide: Int { stub() }
    open var pixelFormatType: UInt32 { stub() }  // OSType
}

/// https://developer.apple.com/documentation/coreml/mlfeaturedescription
open class MLFeatureDescription: NSObject {
    open var name: String { stub() }
    open var type: MLFeatureType { stub() }
    open var isOptional: Bool { stub() }
    /// https://developer.apple.com/documentation/coreml/mlfeaturedescription/imageconstraint
    open var imageConstraint: MLImageConstraint? { stub() }
}

/// https://developer.apple.com/documentation/coreml/mlmodeldescription
open class MLModelDescription: NSObject {
    open var inputDescriptionsByName: [String: MLFeatureDescription] { stub() }
    open var outputDescriptionsByName: [String: MLFeatureDescription] { stub() }
    open var predictedFeatureName: String? { stub() }
    open var predictedProbabilitiesName: String? { stub() }
    /// https://developer.apple.com/documentation/coreml/mlmodeldescription/classlabels
    open var classLabels: [Any]? { stub() }
}

/// https://developer.apple.com/documentation/coreml/mlcomputeunits
public enum MLComputeUnits: Int {
    case cpuOnly = 0
    case cpuAndGPU = 1
    case all = 2
    case cpuAndNeuralEngine = 3
}

/// https://developer.apple.com/documentation/coreml/mlmodelconfiguration
open class MLModelConfiguration: NSObject {
    override public init() { stub() }
    open var computeUnits: MLComputeUnits {
        get { stub() }
        set { stub() }
    }
}

/// https://developer.apple.com/documentation/coreml/mlfeaturevalue
open class MLFeatureValue: NSObject {
    /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/imageoption
    public struct ImageOption: Hashable, Equatable, RawRepresentable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/imageoption/croprect
        public static let cropRect = ImageOption(rawValue: "cropRect")
        /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/imageoption/cropandscale
        public static let cropAndScale = ImageOption(rawValue: "cropAndScale")
    }

    open var type: MLFeatureType { stub() }
    open var isUndefined: Bool { stub() }
    open var int64Value: Int64 { stub() }
    open var doubleValue: Double { stub() }
    open var stringValue: String { stub() }
    /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/dictionaryvalue
    open var dictionaryValue: [AnyHashable: NSNumber] { stub() }
    open var imageBufferValue: CVPixelBuffer? { stub() }

    /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/init(dictionary:)
    public convenience init(dictionary value: [AnyHashable: NSNumber]) throws { stub() }
    /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/init(pixelbuffer:)
    public convenience init(pixelBuffer value: CVPixelBuffer) { stub() }
    /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/init(cgimage:constraint:options:)-30mu4
    public convenience init(cgImage: CGImage, constraint: MLImageConstraint,
                            options: [MLFeatureValue.ImageOption: Any]? = nil) throws { stub() }
    /// https://developer.apple.com/documentation/coreml/mlfeaturevalue (init(cgImage:orientation:constraint:options:))
    public convenience init(cgImage: CGImage, orientation: CGImagePropertyOrientation, constraint: MLImageConstraint,
                            options: [MLFeatureValue.ImageOption: Any]? = nil) throws { stub() }
    /// https://developer.apple.com/documentation/coreml/mlfeaturevalue/init(imageaturl:orientation:constraint:options:)
    public convenience init(imageAtURL url: URL, orientation: CGImagePropertyOrientation, constraint: MLImageConstraint,
                            options: [MLFeatureValue.ImageOption: Any]? = nil) throws { stub() }
}

/// https://developer.apple.com/documentation/coreml/mlfeatureprovider
public protocol MLFeatureProvider {
    var featureNames: Set<String> { get }
    func featureValue(for featureName: String) -> MLFeatureValue?
}

/// https://developer.apple.com/documentation/coreml/mldictionaryfeatureprovider
open class MLDictionaryFeatureProvider: NSObject, MLFeatureProvider {
    /// https://developer.apple.com/documentation/coreml/mldictionaryfeatureprovider/init(dictionary:)
    public init(dictionary: [String: Any]) throws { stub() }
    open var dictionary: [String: MLFeatureValue] { stub() }
    open var featureNames: Set<String> { stub() }
    open func featureValue(for featureName: String) -> MLFeatureValue? { stub() }
}

/// https://developer.apple.com/documentation/coreml/mlmodel
open class MLModel: NSObject {
    /// https://developer.apple.com/documentation/coreml/mlmodel/init(contentsof:)
    public convenience init(contentsOf url: URL) throws { stub() }
    /// https://developer.apple.com/documentation/coreml/mlmodel/init(contentsof:configuration:)
    public convenience init(contentsOf url: URL, configuration: MLModelConfiguration) throws { stub() }
    open var modelDescription: MLModelDescription { stub() }
    open var configuration: MLModelConfiguration { stub() }
    /// https://developer.apple.com/documentation/coreml/mlmodel/prediction(from:)
    open func prediction(from input: MLFeatureProvider) throws -> MLFeatureProvider { stub() }
    /// https://developer.apple.com/documentation/coreml/mlmodel/compilemodel(at:)-6442s (synchronous; documented as
    /// iOS 11-27, deprecated in favour of the asynchronous one below)
    open class func compileModel(at modelURL: URL) throws -> URL { stub() }
    /// https://developer.apple.com/documentation/coreml/mlmodel/compilemodel(at:)-45ao6 (iOS 16+)
    open class func compileModel(at url: URL) async throws -> URL { stub() }
}
