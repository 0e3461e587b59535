// Golden parity of an exported Core ML model on a Mac, simulator or device: every golden image through the model, by
// Vision or by MLModel, compared with the Keras probabilities under the variant's gate. Apple platforms only: on
// Linux this file compiles to nothing.

#if canImport(CoreML) && canImport(Vision)
import Foundation
import GoldenParity

public enum GoldenRun {
    /// A classifier for the model at `modelURL`, with the golden file's labels and resize policy.
    public static func classifier(modelAt modelURL: URL, golden: GoldenFile) throws -> ImageClassifier {
        guard let resize = ImageClassifier.ResizePolicy(rawValue: golden.preprocessing.resize) else {
            throw GoldenError(file: GoldenFile.fileName,
                              problem: "unknown resize policy \(golden.preprocessing.resize)")
        }
        return try ImageClassifier(modelAt: modelURL, labels: golden.labels, resize: resize)
    }

    /// Classify every golden image in `goldenDirectory` with `classifier` through `route` and compare with the
    /// golden probabilities under the gate of `variant` ("fp16", "int8", ...).
    public static func run(goldenDirectory: URL, classifier: ImageClassifier, variant: String,
                           route: ImageClassifier.Route) throws -> ParityReport {
        let golden = try GoldenFile.load(from: goldenDirectory)
        guard classifier.labels == golden.labels else {
            throw GoldenError(file: GoldenFile.fileName, problem: "its labels differ from the model's")
        }
        var predictions: [String: [Double]] = [:]
        for image in golden.images {
            let cgImage = try ImageClassifier.loadImage(at: golden.url(of: image, in: goldenDirectory))
            predictions[image.file] = try classifier.probabilities(cgImage, via: route)
        }
        return Parity.compare(golden, predictions: predictions, gate: try golden.gate(for: variant))
    }
}
#endif
