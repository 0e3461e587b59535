// The golden parity file the Python exporter writes (exporter/xcode/golden.py), schema version 1; the format is
// documented in ios_harness/GOLDEN_FORMAT.md. Foundation only: builds on Linux.
//
// Canonical copy: exporter/xcode/swift/GoldenFile.swift. ios_harness/Sources/GoldenParity/ and the test target of every
// package `exporter xcode` writes carry identical copies (tests/test_xcode.py checks they do not drift).

import Foundation

/// A golden file that cannot be read, or is not consistent with itself. One line naming the file and the problem.
public struct GoldenError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let problem: String

    public init(file: String, problem: String) {
        self.file = file
        self.problem = problem
    }

    public var description: String { "\(file): \(problem)" }
}

/// The preprocessing contract (exporter/preprocessing.py): `y = pixel * scale[c] + bias[c]` after `resize`.
public struct GoldenPreprocessing: Codable, Equatable {
    public let inputSize: [Int]  // [height, width]
    public let channelOrder: String  // "RGB", "BGR" or "L"
    public let scale: [Double]
    public let bias: [Double]
    public let resize: String  // "stretch" or "center_crop"
    public let interpolation: String
    public let inModel: Bool
    public let version: Int
    public let notes: String?

    enum CodingKeys: String, CodingKey {
        case inputSize = "input_size", channelOrder = "channel_order", scale, bias, resize, interpolation
        case inModel = "in_model", version, notes
    }
}

/// How the golden images are stored: PNG, 8-bit RGB, at the model's input size.
public struct GoldenImageFormat: Codable, Equatable {
    public let type: String
    public let color: String
    public let bitDepth: Int
    public let height: Int
    public let width: Int

    enum CodingKeys: String, CodingKey {
        case type, color, bitDepth = "bit_depth", height, width
    }
}

/// The Keras model the golden probabilities come from.
public struct GoldenSource: Codable, Equatable {
    public let file: String
    public let sha256: String
}

/// An artifact of the export the golden files were written for.
public struct GoldenArtifact: Codable, Equatable {
    public let path: String
    public let format: String
    public let variant: String
    public let sha256: String
}

/// One held-out image and what Keras answered for it.
public struct GoldenImage: Codable, Equatable {
    public let file: String  // relative to the golden folder, e.g. "images/0000.png"
    public let source: String  // where the image came from, relative to the held-out folder
    public let label: String?  // the sub-folder label of the source image, if it had one
    public let kerasTopIndex: Int
    public let kerasTopLabel: String
    public let probabilities: [Double]  // one per label, in label order

    public init(file: String, source: String, label: String?, kerasTopIndex: Int, kerasTopLabel: String,
                probabilities: [Double]) {
        self.file = file
        self.source = source
        self.label = label
        self.kerasTopIndex = kerasTopIndex
        self.kerasTopLabel = kerasTopLabel
        self.probabilities = probabilities
    }

    enum CodingKeys: String, CodingKey {
        case file, source, label, kerasTopIndex = "keras_top_index", kerasTopLabel = "keras_top_label", probabilities
    }
}

/// golden.json.
public struct GoldenFile: Codable, Equatable {
    public static let supportedSchemaVersion = 1
    public static let fileName = "golden.json"
    /// float32 softmax rows sum to 1 up to rounding; the exporter refuses models whose rows are further off than this
    /// (PROBABILITY_SUM_TOLERANCE in exporter/loading.py), so a golden row further off is corrupt.
    public static let probabilitySumTolerance = 1e-3

    public let schemaVersion: Int
    public let generator: [String: String]
    public let source: GoldenSource
    public let artifacts: [GoldenArtifact]
    public let labels: [String]
    public let preprocessing: GoldenPreprocessing
    public let imageFormat: GoldenImageFormat
    public let tolerances: [String: Gate]
    public let images: [GoldenImage]

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version", generator, source, artifacts, labels, preprocessing
        case imageFormat = "image_format", tolerances, images
    }

    private struct VersionOnly: Decodable {
        let schemaVersion: Int?

        enum CodingKeys: String, CodingKey { case schemaVersion = "schema_version" }
    }

    /// Read `golden.json` from `directory` and check its structure.
    public static func load(from directory: URL) throws -> GoldenFile {
        let url = directory.appendingPathComponent(fileName)
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw GoldenError(file: url.path, problem: "cannot be read (\(error.localizedDescription))")
        }
        return try decode(data, file: url.path)
    }

    /// Decode golden.json bytes; `file` names the source in error messages.
    public static func decode(_ data: Data, file: String = fileName) throws -> GoldenFile {
        let decoder = JSONDecoder()
        let version: Int?
        do {
            version = try decoder.decode(VersionOnly.self, from: data).schemaVersion
        } catch {
            throw GoldenError(file: file, problem: "is not a JSON object (\(error.localizedDescription))")
        }
        guard version == supportedSchemaVersion else {
            throw GoldenError(file: file, problem: "schema_version must be \(supportedSchemaVersion), got "
                + (version.map(String.init) ?? "none") + "; regenerate it with this exporter or update the reader")
        }
        let golden: GoldenFile
        do {
            golden = try decoder.decode(GoldenFile.self, from: data)
        } catch let error as DecodingError {
            throw GoldenError(file: file, problem: describe(error))
        } catch {
            throw GoldenError(file: file, problem: "cannot be decoded (\(error.localizedDescription))")
        }
        try golden.checkStructure(file: file)
        return golden
    }

    /// Problems that would make a comparison meaningless or crash: thrown by `decode`.
    private func checkStructure(file: String) throws {
        func fail(_ problem: String) -> GoldenError { GoldenError(file: file, problem: problem) }
        guard labels.count >= 2 else { throw fail("needs at least 2 labels, got \(labels.count)") }
        guard Set(labels).count == labels.count else { throw fail("labels are not unique") }
        guard preprocessing.inputSize.count == 2 else { throw fail("preprocessing.input_size must be [height, width]") }
        guard !images.isEmpty else { throw fail("lists no images") }
        var seen = Set<String>()
        for image in images {
            guard seen.insert(image.file).inserted else { throw fail("image \(image.file) is listed twice") }
            guard !image.file.hasPrefix("/"), !image.file.split(separator: "/").contains("..") else {
                throw fail("image path \(image.file) must stay inside the golden folder")
            }
            guard image.probabilities.count == labels.count else {
                throw fail("image \(image.file) has \(image.probabilities.count) probabilities for \(labels.count) labels")
            }
            guard labels.indices.contains(image.kerasTopIndex), labels[image.kerasTopIndex] == image.kerasTopLabel else {
                throw fail("image \(image.file): keras_top_index \(image.kerasTopIndex) does not name label "
                    + "\(image.kerasTopLabel)")
            }
        }
        for (variant, gate) in tolerances where gate.maxAbsProb == nil && gate.minTop1 == nil {
            throw fail("tolerance of variant \(variant) has neither max_abs_prob nor min_top1")
        }
    }

    /// Numeric consistency, one line per problem (empty when consistent): every probability is finite and in [0, 1],
    /// every row sums to 1 within `probabilitySumTolerance`, and the Keras top label is the row's argmax.
    public func consistencyProblems() -> [String] {
        var problems: [String] = []
        for image in images {
            let row = image.probabilities
            if let bad = row.first(where: { !$0.isFinite || $0 < 0 || $0 > 1 }) {
                problems.append("\(image.file): probability \(bad) is not in [0, 1]")
                continue
            }
            let sum = row.reduce(0, +)
            if abs(sum - 1) > GoldenFile.probabilitySumTolerance {
                problems.append("\(image.file): probabilities sum to \(String(format: "%.6g", sum)), not 1")
            }
            let top = Parity.argmax(row)
            if top != image.kerasTopIndex {
                problems.append("\(image.file): keras_top_label \(image.kerasTopLabel) is not the most probable label "
                    + "\(labels[top])")
            }
        }
        return problems
    }

    /// The gate of `variant` ("fp16", "int8", ...), as the Python exporter's default_gate gives it.
    public func gate(for variant: String) throws -> Gate {
        guard let gate = tolerances[variant] else {
            throw GoldenError(file: GoldenFile.fileName, problem: "no tolerance for variant \(variant); known: "
                + tolerances.keys.sorted().joined(separator: ", "))
        }
        return gate
    }

    /// Where an image of this file lives, given the golden folder.
    public func url(of image: GoldenImage, in directory: URL) -> URL {
        directory.appendingPathComponent(image.file)
    }

    /// The Keras probabilities by image file: the shape `Parity.compare` takes predictions in.
    public var probabilitiesByFile: [String: [Double]] {
        Dictionary(uniqueKeysWithValues: images.map { ($0.file, $0.probabilities) })
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey]) -> String {
            keys.isEmpty ? "top level" : keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
                .joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "missing key \(key.stringValue) at \(path(context.codingPath))"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "wrong type at \(path(context.codingPath)): \(context.debugDescription)"
        case .dataCorrupted(let context):
            return "corrupt at \(path(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return "cannot be decoded: \(error.localizedDescription)"
        }
    }
}
