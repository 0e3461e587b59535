import Foundation
import XCTest
@testable import GoldenParity

/// Reads golden files the Python exporter wrote during this test run (ios_harness/run_tests.sh sets GOLDEN_DIR, and
/// PARITY_CASE for the metric comparison). Without GOLDEN_DIR every test here is skipped, with the reason, never passed.
final class CrossLanguageContractTests: XCTestCase {
    static let goldenDirMissing = "GOLDEN_DIR is not set: this contract test reads golden files that the Python "
        + "exporter writes during the run; run ios_harness/run_tests.sh, or set GOLDEN_DIR to a folder written by "
        + "exporter.xcode.write_golden"
    static let parityCaseMissing = "PARITY_CASE is not set: this test compares Swift's metrics with Python's on a "
        + "case ios_harness/prepare.py writes; run ios_harness/run_tests.sh"

    private func goldenDirectory() throws -> URL {
        guard let path = ProcessInfo.processInfo.environment["GOLDEN_DIR"], !path.isEmpty else {
            throw XCTSkip(Self.goldenDirMissing)
        }
        return URL(fileURLWithPath: path, isDirectory: true)
    }

    private func golden() throws -> GoldenFile {
        try GoldenFile.load(from: goldenDirectory())
    }

    func testTheGoldenFilePythonWroteParses() throws {
        let golden = try golden()
        XCTAssertEqual(golden.schemaVersion, GoldenFile.supportedSchemaVersion)
        XCTAssertFalse(golden.images.isEmpty)
        XCTAssertEqual(golden.imageFormat.type, "png")
        XCTAssertEqual(golden.imageFormat.color, "RGB")
        XCTAssertEqual(golden.imageFormat.bitDepth, 8)
        XCTAssertEqual([golden.imageFormat.height, golden.imageFormat.width], golden.preprocessing.inputSize)
        XCTAssertTrue(["stretch", "center_crop"].contains(golden.preprocessing.resize))
        XCTAssertEqual(golden.source.sha256.count, 64)
        for variant in ["fp32", "fp16", "int8", "palette4"] {
            XCTAssertNoThrow(try golden.gate(for: variant), variant)
        }
        for artifact in golden.artifacts {
            XCTAssertNoThrow(try golden.gate(for: artifact.variant), artifact.path)
        }
    }

    func testEveryImageIsAnRGBPNGAtTheModelInputSize() throws {
        let directory = try goldenDirectory()
        let golden = try golden()
        for image in golden.images {
            let bytes = [UInt8](try Data(contentsOf: golden.url(of: image, in: directory)))
            XCTAssertGreaterThan(bytes.count, 33, image.file)
            guard bytes.count > 33 else { continue }
            XCTAssertEqual(Array(bytes[0..<8]), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "\(image.file): PNG")
            XCTAssertEqual(String(decoding: bytes[12..<16], as: UTF8.self), "IHDR", image.file)
            let width = bytes[16..<20].reduce(0) { $0 << 8 | Int($1) }
            let height = bytes[20..<24].reduce(0) { $0 << 8 | Int($1) }
            XCTAssertEqual([height, width], golden.preprocessing.inputSize, image.file)
            XCTAssertEqual(bytes[24], 8, "\(image.file): bit depth")
            XCTAssertEqual(bytes[25], 2, "\(image.file): PNG colour type 2 is RGB")
        }
    }

    func testEveryRowSumsToOneAndItsTopLabelIsTheArgmax() throws {
        let golden = try golden()
        XCTAssertEqual(golden.consistencyProblems(), [])
        for image in golden.images {
            XCTAssertEqual(image.probabilities.count, golden.labels.count, image.file)
            XCTAssertEqual(image.probabilities.reduce(0, +), 1, accuracy: GoldenFile.probabilitySumTolerance, image.file)
            let top = Parity.argmax(image.probabilities)
            XCTAssertEqual(golden.labels[top], image.kerasTopLabel, image.file)
            XCTAssertEqual(top, image.kerasTopIndex, image.file)
        }
    }

    func testGoldenAgainstItselfPassesEveryGate() throws {
        let golden = try golden()
        for (variant, gate) in golden.tolerances {
            let report = Parity.compare(golden, predictions: golden.probabilitiesByFile, gate: gate)
            XCTAssertTrue(report.passed, "\(variant): \(report)")
            XCTAssertEqual(report.failures, [], variant)
            XCTAssertEqual(report.metrics.top1Agreement, 1, variant)
            XCTAssertEqual(report.metrics.maxAbsProb, 0, variant)
        }
    }

    func testAPerturbedCopyFails() throws {
        let golden = try golden()
        XCTAssertGreaterThanOrEqual(golden.images.count, 2, "the perturbation needs two images")
        guard golden.images.count >= 2 else { return }
        var predicted = golden.probabilitiesByFile
        // Image 0: 0.05 of probability moves from the top label to the least likely one (over fp16's 2e-2).
        let first = golden.images[0]
        var shifted = first.probabilities
        let least = shifted.indices.min { shifted[$0] < shifted[$1] }!
        shifted[first.kerasTopIndex] -= 0.05
        shifted[least] += 0.05
        predicted[first.file] = shifted
        // Image 1: its two most likely labels swap: a label flip.
        let second = golden.images[1]
        var flipped = second.probabilities
        let runnerUp = flipped.indices.filter { $0 != second.kerasTopIndex }.max { flipped[$0] < flipped[$1] }!
        flipped.swapAt(second.kerasTopIndex, runnerUp)
        predicted[second.file] = flipped

        let report = Parity.compare(golden, predictions: predicted, gate: try golden.gate(for: "fp16"))
        XCTAssertFalse(report.passed, "\(report)")
        XCTAssertTrue(report.deviations.map(\.image).contains(first.file), "\(report)")
        XCTAssertTrue(report.flips.contains(.init(image: second.file, golden: golden.labels[second.kerasTopIndex],
                                                  predicted: golden.labels[runnerUp])), "\(report)")
        XCTAssertTrue(report.gateFailures.contains { $0.hasPrefix("max |dp|") }, "\(report)")
        XCTAssertTrue(report.gateFailures.contains { $0.hasPrefix("top-1 agreement") }, "\(report)")
        XCTAssertFalse(Parity.compare(golden, predictions: predicted, gate: try golden.gate(for: "fp32")).passed)
        if golden.images.count < 50 {  // then one flip is below int8's 98 % agreement
            XCTAssertFalse(Parity.compare(golden, predictions: predicted, gate: try golden.gate(for: "int8")).passed)
        }
    }

    /// The same predictions through Python's ArtifactParity (exporter/validation/parity.py) and through Swift's
    /// Parity.compare give the same metrics, gate failures and flipped images.
    func testMetricsAndGateFailuresAgreeWithPython() throws {
        let directory = try goldenDirectory()
        guard let path = ProcessInfo.processInfo.environment["PARITY_CASE"], !path.isEmpty else {
            throw XCTSkip(Self.parityCaseMissing)
        }
        let case_ = try JSONDecoder().decode(PythonCase.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        let golden = try GoldenFile.load(from: directory)
        XCTAssertFalse(case_.python.isEmpty)
        for (variant, expected) in case_.python {
            let report = Parity.compare(golden, predictions: case_.predictions, gate: try golden.gate(for: variant))
            XCTAssertEqual(report.metrics.images, expected.images, variant)
            XCTAssertEqual(report.metrics.top1Agreement, expected.top1Agreement, accuracy: 1e-12, variant)
            XCTAssertEqual(report.metrics.maxAbsProb, expected.maxAbsProb, accuracy: 1e-12, variant)
            XCTAssertEqual(report.metrics.meanAbsProb, expected.meanAbsProb, accuracy: 1e-12, variant)
            XCTAssertEqual(report.gateFailures, expected.failures, variant)
            XCTAssertEqual(report.passed, expected.status == "passed", variant)
            XCTAssertEqual(Set(report.flips.map(\.image)), Set(expected.flipped), variant)
        }
    }
}

/// The file ios_harness/prepare.py writes: perturbed predictions and what Python's validation code made of them.
private struct PythonCase: Decodable {
    struct Result: Decodable {
        let status: String
        let images: Int
        let top1Agreement: Double
        let maxAbsProb: Double
        let meanAbsProb: Double
        let failures: [String]
        let flipped: [String]

        enum CodingKeys: String, CodingKey {
            case status, images, top1Agreement = "top1_agreement", maxAbsProb = "max_abs_prob"
            case meanAbsProb = "mean_abs_prob", failures, flipped
        }
    }

    let predictions: [String: [Double]]
    let python: [String: Result]
}
