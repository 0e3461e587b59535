// An exported Core ML image classifier, run two ways: through Vision (VNCoreMLRequest, the way apps usually call it)
// and directly through MLModel with an image feature value. Apple platforms only: on Linux this file compiles to
// nothing, because Core ML and Vision do not exist there.
//
// Canonical copy: exporter/xcode/swift/ImageClassifier.swift. ios_harness/Sources/CoreMLHarness/ and the library target
// of every package `exporter xcode` writes carry identical copies (tests/test_xcode.py checks they do not drift).

#if canImport(CoreML) && canImport(Vision)
import CoreGraphics
import CoreImage
import CoreML
import CoreVideo
import Foundation
import ImageIO
import Vision

public final class ImageClassifier {
    /// How an image reaches the model.
    public enum Route: String, CaseIterable {
        /// VNCoreMLRequest: Vision scales and crops by `ResizePolicy` and converts the pixel format.
        case vision
        /// MLModel.prediction with an MLFeatureValue built from the image under the model's image constraint.
        case coreML
    }

    /// The export's resize policy (the contract's "resize"), and the Vision / Core ML option that reproduces it.
    public enum ResizePolicy: String {
        case stretch
        case centerCrop = "center_crop"

        public var cropAndScale: VNImageCropAndScaleOption {
            switch self {
            case .stretch: return .scaleFill
            case .centerCrop: return .centerCrop
            }
        }
    }

    /// Something about the model or an image is not what a classifier needs. One line naming the file and problem.
    public struct Failure: Error, CustomStringConvertible {
        public let file: String
        public let problem: String

        public var description: String { "\(file): \(problem)" }
    }

    public let model: MLModel
    /// Class labels in the order probability vectors use.
    public let labels: [String]
    public let resize: ResizePolicy
    private let name: String
    private let visionModel: VNCoreMLModel
    private let inputName: String
    private let inputConstraint: MLImageConstraint
    private let probabilitiesName: String
    private let ciContext = CIContext()

    /// Load the model at `url` (.mlpackage, .mlmodel or compiled .mlmodelc). Uncompiled models are compiled with
    /// MLModel.compileModel(at:); with a `cacheKey` the compiled model is kept in the Caches folder and reused, so only
    /// the first launch pays for compilation. `labels`, when given, must equal the labels embedded in the model.
    public init(modelAt url: URL, labels: [String]? = nil, resize: ResizePolicy,
                configuration: MLModelConfiguration = MLModelConfiguration(), cacheKey: String? = nil) throws {
        let file = url.lastPathComponent
        let compiled = try ImageClassifier.compiledModel(at: url, cacheKey: cacheKey)
        let loaded = try MLModel(contentsOf: compiled, configuration: configuration)
        let description = loaded.modelDescription
        guard let input = description.inputDescriptionsByName.first(where: { $0.value.type == .image }),
              let constraint = input.value.imageConstraint else {
            throw Failure(file: file, problem: "the model has no image input")
        }
        guard let probabilities = description.predictedProbabilitiesName else {
            throw Failure(file: file, problem: "not a classifier: no probabilities output")
        }
        let embedded = (description.classLabels ?? []).map { "\($0)" }
        guard embedded.count >= 2 else {
            throw Failure(file: file, problem: "not a classifier: \(embedded.count) class labels")
        }
        if let labels, labels != embedded {
            throw Failure(file: file, problem: "its embedded labels \(embedded.prefix(5))... differ from the given "
                + "labels \(labels.prefix(5))...")
        }
        name = file
        model = loaded
        self.labels = embedded
        self.resize = resize
        inputName = input.key
        inputConstraint = constraint
        probabilitiesName = probabilities
        visionModel = try VNCoreMLModel(for: loaded)
    }

    // MARK: - classify

    /// Labels with their probabilities, most probable first.
    public func classify(_ image: CGImage, orientation: CGImagePropertyOrientation = .up,
                         via route: Route = .vision) throws -> [(label: String, probability: Double)] {
        ranked(try probabilities(image, orientation: orientation, via: route))
    }

    /// Labels with their probabilities, most probable first.
    public func classify(_ pixelBuffer: CVPixelBuffer, orientation: CGImagePropertyOrientation = .up,
                         via route: Route = .vision) throws -> [(label: String, probability: Double)] {
        ranked(try probabilities(pixelBuffer, orientation: orientation, via: route))
    }

    /// One probability per label, in `labels` order.
    public func probabilities(_ image: CGImage, orientation: CGImagePropertyOrientation = .up,
                              via route: Route = .vision) throws -> [Double] {
        switch route {
        case .vision:
            return try visionProbabilities(VNImageRequestHandler(cgImage: image, orientation: orientation, options: [:]))
        case .coreML:
            let options: [MLFeatureValue.ImageOption: Any] = [.cropAndScale: resize.cropAndScale.rawValue]
            let value = try MLFeatureValue(cgImage: image, orientation: orientation, constraint: inputConstraint,
                                           options: options)
            return try modelProbabilities(value)
        }
    }

    /// One probability per label, in `labels` order.
    public func probabilities(_ pixelBuffer: CVPixelBuffer, orientation: CGImagePropertyOrientation = .up,
                              via route: Route = .vision) throws -> [Double] {
        switch route {
        case .vision:
            return try visionProbabilities(VNImageRequestHandler(cvPixelBuffer: pixelBuffer, orientation: orientation,
                                                                 options: [:]))
        case .coreML:
            // MLFeatureValue scales and crops only CGImages, so the buffer goes through one.
            let image = CIImage(cvPixelBuffer: pixelBuffer)
            guard let cgImage = ciContext.createCGImage(image, from: image.extent) else {
                throw Failure(file: name, problem: "Core Image cannot convert the pixel buffer to a CGImage")
            }
            return try probabilities(cgImage, orientation: orientation, via: .coreML)
        }
    }

    /// Decode an image file (PNG, JPEG, HEIC, ...) with ImageIO.
    public static func loadImage(at url: URL) throws -> CGImage {
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil) else {
            throw Failure(file: url.path, problem: "ImageIO cannot decode this image")
        }
        return image
    }

    /// Decode an image file with ImageIO, with the EXIF orientation it records (`.up` when it records none), to pass
    /// on as `classify(_:orientation:)`'s orientation.
    public static func loadImageAndOrientation(at url: URL) throws -> (CGImage, CGImagePropertyOrientation) {
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil) else {
            throw Failure(file: url.path, problem: "ImageIO cannot decode this image")
        }
        let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any]
        let raw = (properties?[kCGImagePropertyOrientation] as? NSNumber)?.uint32Value ?? 1
        return (image, CGImagePropertyOrientation(rawValue: raw) ?? .up)
    }

    // MARK: - compilation

    private static let compileLock = NSLock()

    /// A compiled model for `url`: itself when it is already .mlmodelc, else the result of MLModel.compileModel(at:),
    /// kept under Caches/CompiledCoreMLModels/<cacheKey>.mlmodelc when a key is given (use one that changes with the
    /// model, such as its SHA-256, so an updated model is compiled again).
    public static func compiledModel(at url: URL, cacheKey: String? = nil) throws -> URL {
        if url.pathExtension == "mlmodelc" {
            return url
        }
        guard let cacheKey else {
            return try MLModel.compileModel(at: url)
        }
        compileLock.lock()
        defer { compileLock.unlock() }
        let files = FileManager.default
        let caches = try files.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let folder = caches.appendingPathComponent("CompiledCoreMLModels", isDirectory: true)
        let safeKey = String(cacheKey.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
        let target = folder.appendingPathComponent(safeKey + ".mlmodelc", isDirectory: true)
        if files.fileExists(atPath: target.path) {
            return target
        }
        let compiled = try MLModel.compileModel(at: url)
        try files.createDirectory(at: folder, withIntermediateDirectories: true)
        do {
            try files.moveItem(at: compiled, to: target)
        } catch {
            // Another process may have cached the same model meanwhile; any other failure keeps the temporary copy.
            return files.fileExists(atPath: target.path) ? target : compiled
        }
        return target
    }

    // MARK: - private

    private func visionProbabilities(_ handler: VNImageRequestHandler) throws -> [Double] {
        let request = VNCoreMLRequest(model: visionModel)
        request.imageCropAndScaleOption = resize.cropAndScale
        try handler.perform([request])
        guard let observations = request.results as? [VNClassificationObservation], !observations.isEmpty else {
            throw Failure(file: name, problem: "Vision returned no classification observations")
        }
        var byLabel: [String: Double] = [:]
        for observation in observations {
            byLabel[observation.identifier] = Double(observation.confidence)
        }
        return try ordered(byLabel, route: "Vision")
    }

    private func modelProbabilities(_ image: MLFeatureValue) throws -> [Double] {
        let input = try MLDictionaryFeatureProvider(dictionary: [inputName: image])
        let output = try model.prediction(from: input)
        guard let dictionary = output.featureValue(for: probabilitiesName)?.dictionaryValue else {
            throw Failure(file: name, problem: "prediction has no \(probabilitiesName) dictionary")
        }
        var byLabel: [String: Double] = [:]
        for (key, value) in dictionary {
            byLabel["\(key.base)"] = value.doubleValue
        }
        return try ordered(byLabel, route: "Core ML")
    }

    private func ordered(_ byLabel: [String: Double], route: String) throws -> [Double] {
        try labels.map { label -> Double in
            guard let probability = byLabel[label] else {
                throw Failure(file: name, problem: "\(route) returned no probability for label \(label)")
            }
            return probability
        }
    }

    private func ranked(_ probabilities: [Double]) -> [(label: String, probability: Double)] {
        zip(labels, probabilities).map { (label: $0, probability: $1) }.sorted { $0.probability > $1.probability }
    }
}
#endif
